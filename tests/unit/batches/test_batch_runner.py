"""The batch runner on PostgreSQL, through the real relay, usage recorder and billing aggregation
(only the engines are scripted, as in tests/unit/api): a batch with a malformed line completes with
its output and error files, each line metered once at the batch price, a runner that dies is resumed
by another, a cancel midway, expiry, lines waiting while interactive traffic is busy or an engine has requests waiting, and a batch
stopped by its key's revocation or its tenant's suspension (the real key authenticator)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from billing import outbox
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.credentials import BatchCredentials
from crosslogic.batches.engine_lines import EngineLineExecutor, InteractiveLoad
from crosslogic.batches.engine_room import EngineRoom
from crosslogic.batches.files import FileStore
from crosslogic.batches.ids import line_request_id
from crosslogic.batches.runner import BatchRunner, Capacity
from crosslogic.batches.store import Batch, BatchStore
from crosslogic.engine.base import EngineEvent
from crosslogic.engine.priority import BATCH_PRIORITY
from crosslogic.metering import UsageRecorder
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad
from crosslogic.tenants.api_key_repository import create_api_key, revoke_api_key
from crosslogic.tenants.models import ApiKeyCreate
from crosslogic.tenants.tenant_repository import set_tenant_status
from tests.unit.api.scripted_api import ScriptedGateway
from tests.unit.batches.batch_fixtures import chat_lines, file_store, new_tenant

LINES = 20
MALFORMED = 7


class SlowGateway(ScriptedGateway):
    """Each request takes 0.1 s before its answer: long enough to stop or cancel a batch midway."""

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        return self._slow(super().stream(model, endpoint, body, request_id, hints))

    async def _slow(self, events: AsyncIterator[EngineEvent]) -> AsyncIterator[EngineEvent]:
        await asyncio.sleep(0.1)
        async for event in events:
            yield event


@pytest.fixture
async def recorder(db_pool: asyncpg.Pool) -> AsyncIterator[UsageRecorder]:
    recorder = UsageRecorder(db_pool)
    recorder.start()
    yield recorder
    await recorder.close()


async def _idle(db: asyncpg.Pool) -> None:
    # Batches other tests left active must not be claimed by this test's runners.
    await db.execute("UPDATE batches SET claimed_by = 'parked', claim_expires_at = now() + interval '1 day' "
                     "WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')")


async def _batch(db: asyncpg.Pool, files: FileStore, lines: bytes) -> Batch:
    await _idle(db)
    tenant = await new_tenant(db)
    stored = await files.create(tenant, "in.jsonl", "batch", lines)
    return await BatchStore(db).create(tenant, uuid.uuid4(), endpoint="/v1/chat/completions",
                                       input_file_id=stored.id, completion_window="24h", metadata=None)


def _runner(db: asyncpg.Pool, files: FileStore, recorder: UsageRecorder, gateway: ScriptedGateway, *,
            capacity: Capacity | None = None, **config: float) -> BatchRunner:
    settings = BatchesConfig.model_validate({"max_concurrent_lines": 4, "claim_ttl_s": 30, **config})
    executor = EngineLineExecutor(gateway, recorder, region="local", retries=0,
                                  price_multiplier=settings.price_multiplier)
    return BatchRunner(BatchStore(db), files, executor, settings, capacity=capacity)


async def _jsonl(files: FileStore, batch: Batch, file_id: str | None) -> list[dict[str, object]]:
    assert file_id is not None
    return [json.loads(line) for line in (await files.content(batch.tenant_id, file_id)).splitlines()]


async def _completed_lines(db: asyncpg.Pool, batch_id: str) -> int:
    return int(await db.fetchval("SELECT completed FROM batches WHERE id = $1", batch_id))


async def test_batch_completes_with_output_error_files_and_batch_usage(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(LINES, malformed_at=(MALFORMED,)))
    runner = _runner(db_pool, files, recorder, ScriptedGateway(["m"]))
    assert await runner.run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert done.status == "completed" and done.completed_at is not None and done.finalizing_at is not None
    assert (done.total, done.completed, done.failed) == (LINES, LINES - 1, 1)
    output = await _jsonl(files, done, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(LINES) if i != MALFORMED]
    first = output[0]
    assert first["response"] == {"status_code": 200, "request_id": line_request_id(batch.id, 0),
                                 "body": {"object": "chat.completion", "choices": [],
                                          "usage": {"prompt_tokens": 5, "completion_tokens": 3}}}
    errors = await _jsonl(files, done, done.error_file_id)
    assert len(errors) == 1 and errors[0]["error"] == {
        "code": "invalid_json_line", "message": "This line is not parseable as valid JSON."}
    assert (await files.get(batch.tenant_id, str(done.output_file_id))).purpose == "batch_output"
    # One ledger row per line that ran, keyed by its request id, marked with the batch and its price.
    await recorder.flush()
    rows = await db_pool.fetch(
        "SELECT request_id, prompt_tokens, completion_tokens, price_multiplier, batch_id FROM usage_ledger "
        "WHERE tenant_id = $1", batch.tenant_id)
    assert sorted(r["request_id"] for r in rows) == sorted(
        line_request_id(batch.id, i) for i in range(LINES) if i != MALFORMED)
    assert {(r["batch_id"], float(r["price_multiplier"]), r["prompt_tokens"], r["completion_tokens"])
            for r in rows} == {(batch.id, 0.5, 5, 3)}
    # Billing: the tenant's meter events carry the batch price, once (19 lines x 5 and x 3 tokens, halved).
    while (await outbox.aggregate_ledger(db_pool, 1000)).ledger_rows:
        pass
    values = dict(await db_pool.fetch("SELECT meter, sum(value) FROM billing_outbox WHERE tenant_id = $1 "
                                      "GROUP BY meter", batch.tenant_id))
    assert values == {"input_tokens": 48, "output_tokens": 29}  # round(47.5), round(28.5)


async def test_a_dead_runners_batch_is_resumed_and_each_line_metered_once(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(LINES, malformed_at=(MALFORMED,)))
    slow = SlowGateway(["m"])
    first = _runner(db_pool, files, recorder, slow, max_concurrent_lines=2)
    task = asyncio.create_task(first.run_once())
    while await _completed_lines(db_pool, batch.id) < 5:
        await asyncio.sleep(0.01)
    task.cancel()  # the replica dies mid-batch, lines in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    # A killed process never releases its claim: it expires.
    await db_pool.execute("UPDATE batches SET claimed_by = 'dead', claim_expires_at = now() - interval '1 s' "
                          "WHERE id = $1", batch.id)
    status = await db_pool.fetchval("SELECT status FROM batches WHERE id = $1", batch.id)
    assert status == "in_progress"
    second = _runner(db_pool, files, recorder, slow)
    assert await second.run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert (done.status, done.total, done.completed, done.failed) == ("completed", LINES, LINES - 1, 1)
    assert second.lines_run < LINES - 1  # it ran only what was left
    output = await _jsonl(files, done, done.output_file_id)
    assert len(output) == LINES - 1 and len({o["custom_id"] for o in output}) == LINES - 1
    await recorder.flush()
    metered = await db_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id)
    assert metered == LINES - 1


async def test_each_line_is_in_the_ledger_before_its_result_is_recorded(
    db_pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    # A recorder whose buffer is never flushed (as in a replica killed before its next flush): batch
    # lines write their rows themselves, so every line in the output file is metered.
    unflushed = UsageRecorder(db_pool)
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(5))
    assert await _runner(db_pool, files, unflushed, ScriptedGateway(["m"])).run_once()
    assert await _completed_lines(db_pool, batch.id) == 5
    rows = await db_pool.fetch("SELECT request_id FROM usage_ledger WHERE batch_id = $1", batch.id)
    assert sorted(r["request_id"] for r in rows) == sorted(line_request_id(batch.id, i) for i in range(5))


async def test_cancel_midway(db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(LINES))
    runner = _runner(db_pool, files, recorder, SlowGateway(["m"]), max_concurrent_lines=1)
    task = asyncio.create_task(runner.run_once())
    while await _completed_lines(db_pool, batch.id) < 3:
        await asyncio.sleep(0.01)
    cancelling = await BatchStore(db_pool).cancel(batch.tenant_id, batch.id)
    assert cancelling.status == "cancelling"
    await asyncio.wait_for(task, 30)
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.completed >= 3 and done.completed + done.failed == LINES and done.failed > 0
    errors = await _jsonl(files, done, done.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}  # type: ignore[index]
    assert len(await _jsonl(files, done, done.output_file_id)) == done.completed


async def test_expired_batch(db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(3))
    await db_pool.execute("UPDATE batches SET expires_at = now() - interval '1 s' WHERE id = $1", batch.id)
    assert await _runner(db_pool, files, recorder, ScriptedGateway(["m"])).run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert (done.status, done.failed, done.output_file_id) == ("expired", 3, None)
    assert {e["error"]["code"] for e in await _jsonl(files, done, done.error_file_id)} == {"batch_expired"}  # type: ignore[index]


async def test_missing_input_file_fails_the_batch(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(2))
    await files.delete(batch.tenant_id, batch.input_file_id)
    assert await _runner(db_pool, files, recorder, ScriptedGateway(["m"])).run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert done.status == "failed" and done.errors and done.errors[0]["code"] == "invalid_file"


async def test_lines_wait_while_interactive_traffic_is_busy(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    gateway = ScriptedGateway(["m"], token_gap_s=0.5)
    load = InteractiveLoad(gateway, busy_threshold=1)
    batch = await _batch(db_pool, files, chat_lines(4))
    # One interactive stream in flight (held at its first token): at the threshold, no line starts.
    interactive = load.stream("m", "chat", {"stream": True}, "req_" + "1" * 32, RoutingHints())
    await anext(interactive)
    assert not load.has_room()
    task = asyncio.create_task(_runner(db_pool, files, recorder, gateway, capacity=load).run_once())
    await asyncio.sleep(1.0)
    assert await _completed_lines(db_pool, batch.id) == 0
    await interactive.aclose()  # the interactive request ends: the batch takes the room
    assert load.has_room()
    await asyncio.wait_for(task, 30)
    assert await _completed_lines(db_pool, batch.id) == 4


async def test_lines_wait_while_an_engine_has_requests_waiting(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    gateway = ScriptedGateway(["m"])
    # The router's view of the model's engines, as the ingress's gateway would hand it over.
    view = {"m": [ReplicaLoad(replica_id="a", model="m", waiting=2), ReplicaLoad(replica_id="b", model="m")]}
    room = EngineRoom(view.get, {"m": 32}, busy_fraction=0.5, default_capacity=256)
    load = InteractiveLoad(gateway, busy_threshold=4, engines=room.has_room)
    batch = await _batch(db_pool, files, chat_lines(4))
    task = asyncio.create_task(_runner(db_pool, files, recorder, gateway, capacity=load).run_once())
    await asyncio.sleep(1.0)
    assert await _completed_lines(db_pool, batch.id) == 0 and load.in_flight == 0
    view["m"][0] = ReplicaLoad(replica_id="a", model="m", running=3)  # the queue drained
    await asyncio.wait_for(task, 30)
    assert await _completed_lines(db_pool, batch.id) == 4


async def test_a_line_outside_the_keys_model_scopes_fails_alone(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    files = file_store(db_pool, tmp_path)
    await _idle(db_pool)
    tenant = await new_tenant(db_pool)
    lines = chat_lines(2) + chat_lines(1, model="other")
    stored = await files.create(tenant, "in.jsonl", "batch", lines)
    batch = await BatchStore(db_pool).create(tenant, uuid.uuid4(), endpoint="/v1/chat/completions",
                                             input_file_id=stored.id, completion_window="24h", metadata=None,
                                             model_scopes=frozenset({"m"}))
    assert await _runner(db_pool, files, recorder, ScriptedGateway(["m", "other"])).run_once()
    done = await BatchStore(db_pool).get(tenant, batch.id)
    assert (done.status, done.completed, done.failed) == ("completed", 2, 1)
    [refused] = await _jsonl(files, done, done.error_file_id)
    assert refused["response"]["status_code"] == 403  # type: ignore[index]
    assert refused["error"]["message"] == "This API key is not allowed to use the model 'other'."  # type: ignore[index]


@pytest.fixture
async def keys(db_pool: asyncpg.Pool) -> AsyncIterator[KeyAuthenticator]:
    # The ingress's authenticator: its cache, and the NOTIFY listener that drops revoked entries.
    authenticator = KeyAuthenticator(db_pool)
    await authenticator.start()
    yield authenticator
    await authenticator.close()


@pytest.mark.parametrize("change", ["revoke key", "suspend tenant"])
async def test_a_revoked_key_or_suspended_tenant_stops_the_batch(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder, keys: KeyAuthenticator, change: str,
) -> None:
    files = file_store(db_pool, tmp_path)
    await _idle(db_pool)
    tenant = await new_tenant(db_pool)
    key = await create_api_key(db_pool, tenant, ApiKeyCreate(name="batch"))
    # The creating request authenticated the key: its entry is in the cache, as in the ingress.
    await keys.authenticate(f"Bearer {key.secret}", None)
    stored = await files.create(tenant, "in.jsonl", "batch", chat_lines(LINES))
    batch = await BatchStore(db_pool).create(tenant, key.key.id, endpoint="/v1/chat/completions",
                                             input_file_id=stored.id, completion_window="24h", metadata=None)
    settings = BatchesConfig.model_validate({"max_concurrent_lines": 1, "claim_ttl_s": 30})
    executor = EngineLineExecutor(SlowGateway(["m"]), recorder, region="local", retries=0,
                                  price_multiplier=settings.price_multiplier)
    runner = BatchRunner(BatchStore(db_pool), files, executor, settings,
                         credentials=BatchCredentials(db_pool, keys))
    task = asyncio.create_task(runner.run_once())
    while await _completed_lines(db_pool, batch.id) < 3:
        await asyncio.sleep(0.01)
    if change == "revoke key":
        await revoke_api_key(db_pool, key.key.id)
    else:
        await set_tenant_status(db_pool, tenant, "suspended")
    await asyncio.wait_for(task, 10)
    done = await BatchStore(db_pool).get(tenant, batch.id)
    code = "key_revoked" if change == "revoke key" else "tenant_suspended"
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors and done.errors[0]["code"] == code
    # At most the line in flight when the change committed ran after it; every other line failed unrun.
    assert 3 <= done.completed <= 5 and done.completed + done.failed == LINES
    errors = await _jsonl(files, done, done.error_file_id)
    assert len(errors) == done.failed and {e["error"]["code"] for e in errors} == {code}  # type: ignore[index]
    assert all(e["response"] is None for e in errors)
    assert len(await _jsonl(files, done, done.output_file_id)) == done.completed
    # Only the lines that ran are metered.
    await recorder.flush()
    metered = await db_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id)
    assert metered == done.completed


async def test_a_batch_whose_key_is_unknown_fails_before_any_line(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder, keys: KeyAuthenticator,
) -> None:
    files = file_store(db_pool, tmp_path)
    batch = await _batch(db_pool, files, chat_lines(3))  # created with a key id no key has
    executor = EngineLineExecutor(ScriptedGateway(["m"]), recorder, region="local", retries=0, price_multiplier=0.5)
    runner = BatchRunner(BatchStore(db_pool), files, executor, BatchesConfig(),
                         credentials=BatchCredentials(db_pool, keys))
    assert await runner.run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert (done.status, done.completed, done.failed, done.output_file_id) == ("failed", 0, 3, None)
    assert done.errors and done.errors[0]["code"] == "key_revoked"


class BodyRecordingGateway(ScriptedGateway):
    """Keeps the body each engine call was given."""

    def __init__(self, models: list[str]) -> None:
        super().__init__(models)
        self.bodies: list[dict[str, Any]] = []

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        self.bodies.append(body)
        return super().stream(model, endpoint, body, request_id, hints)


async def test_lines_run_at_the_batch_priority_and_a_lines_own_priority_fails_it(
    db_pool: asyncpg.Pool, tmp_path: Path, recorder: UsageRecorder,
) -> None:
    """Under priority scheduling a line claiming `priority: -100` would jump every interactive request."""
    files = file_store(db_pool, tmp_path)
    claimed = json.dumps({"custom_id": "jumper", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": -100}})
    batch = await _batch(db_pool, files, chat_lines(2) + claimed.encode() + b"\n")
    gateway = BodyRecordingGateway(["m"])
    assert await _runner(db_pool, files, recorder, gateway).run_once()
    done = await BatchStore(db_pool).get(batch.tenant_id, batch.id)
    assert (done.status, done.completed, done.failed) == ("completed", 2, 1)
    assert [b["priority"] for b in gateway.bodies] == [BATCH_PRIORITY, BATCH_PRIORITY]
    [refused] = await _jsonl(files, done, done.error_file_id)
    assert refused["custom_id"] == "jumper"
    assert refused["response"]["status_code"] == 400  # type: ignore[index]
    assert refused["response"]["body"]["error"]["param"] == "priority"  # type: ignore[index]
