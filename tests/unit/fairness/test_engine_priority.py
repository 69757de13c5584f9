"""The tenant's tier as vLLM's request priority (crosslogic/engine/priority.py): the mapping from
weight, a client's own priority refused, the field kept only for engines scheduling by priority,
and what this vLLM build makes of it (engine argument and request field). No engine is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.priority import engine_body, prioritized_body, tier_priority, uses_priority_scheduling
from crosslogic.errors import InvalidRequestError


def test_weights_map_to_priority_steps() -> None:
    assert [tier_priority(w) for w in (None, 1.0, 2.0, 4.0, 0.5, 3.0)] == [0, 0, -1, -2, 1, -2]


def test_the_server_sets_priority_and_refuses_the_clients() -> None:
    body = {"model": "m", "messages": []}
    assert prioritized_body(body, 4.0) == {**body, "priority": -2}
    with pytest.raises(InvalidRequestError) as refused:
        prioritized_body({**body, "priority": -100}, None)
    assert refused.value.status_code == 400 and refused.value.param == "priority"


def test_only_a_priority_scheduling_engine_gets_the_field() -> None:
    body = {"model": "m", "priority": -1}
    assert engine_body(body, False) == {"model": "m"}
    assert engine_body(body, True) is body
    assert uses_priority_scheduling({"scheduling_policy": "priority"})
    assert not uses_priority_scheduling({}) and not uses_priority_scheduling({"scheduling_policy": "fcfs"})


# vLLM's request models import torch, whose own deprecation of torch.jit.script_method fires on import.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_this_vllm_build_takes_the_policy_and_the_request_priority(tmp_path: Path) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from crosslogic.engine.vllm_engine import VLLMEngine

    config = ModelDeploymentConfig.model_validate({
        "served_name": "m", "source": "m", "engine": {"engine_kwargs": {"scheduling_policy": "priority"}}})
    args = VLLMEngine(config, str(tmp_path))._engine_args()
    assert args.scheduling_policy == "priority"  # --scheduling-policy's dest, what AsyncEngineArgs reads
    request = ChatCompletionRequest.model_validate(
        prioritized_body({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 2.0))
    assert request.priority == -1
