"""Routing policy settings: the app's `router` section and a model's own `router` override.

Kept apart from crosslogic/routing/policies.py so crosslogic/config.py can use it without importing
the policies (which import the engine interface, which imports the config).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Registered in crosslogic/routing/policies.py (a test keeps the two lists equal).
PolicyName = Literal["least_loaded_p2c", "least_loaded", "prefix_aware", "session_affinity", "round_robin"]
# Where session_affinity reads a session id from, before OpenAI's `user` field.
SESSION_HEADER = "x-session-id"


class AffinityOptions(BaseModel):
    """How prefix_aware and session_affinity place requests (ignored by the other policies)."""

    model_config = ConfigDict(extra="forbid")

    # The load bound's epsilon: a replica holding more than ceil((1 + epsilon) * mean) requests is
    # passed over for the next one on the ring. Lower spreads a hot prefix sooner (fewer cache hits),
    # higher keeps it together longer (deeper queues on its replicas).
    load_bound: float = Field(default=0.25, gt=0, le=10)
    # Prompt text is hashed in blocks of this many characters (~4 characters a token: 256 is 4 vLLM
    # blocks of 16 tokens), up to prefix_max_chars: a longer shared prefix adds nothing to the choice.
    prefix_block_chars: int = Field(default=256, ge=16, le=65_536)
    prefix_max_chars: int = Field(default=8192, ge=16, le=1_048_576)
    # Block hashes (and sessions) this ingress replica remembers it sent somewhere, most recent kept.
    index_entries: int = Field(default=65_536, ge=16, le=16_777_216)
    ring_vnodes: int = Field(default=64, ge=8, le=1024)


class ModelRouting(BaseModel):
    """A model's own `router` section: what it leaves unset comes from the app's."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName | None = None
    affinity: AffinityOptions | None = None
