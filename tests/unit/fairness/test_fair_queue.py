"""The fair queue (crosslogic/fairness/fair_queue.py): weighted order across tenants, FIFO within one,
no starvation, cancellation, bounded wait, headroom for a tenant under its share, slots held elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from crosslogic.fairness.fair_queue import FairQueue, QueueFullError, Slot


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Waiters that note the order they were granted in and keep their slots until told."""

    def __init__(self, queue: FairQueue) -> None:
        self.queue = queue
        self.granted: list[str] = []
        self.slots: list[Slot] = []
        self.tasks: list[asyncio.Task[None]] = []

    def wait(self, tenant: str, name: str, weight: float = 1.0) -> asyncio.Task[None]:
        async def run() -> None:
            slot = await self.queue.acquire(tenant, weight)
            self.granted.append(name)
            self.slots.append(slot)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.append(task)
        return task

    async def release_one(self) -> None:
        self.slots.pop(0).release()
        await settle()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def full_queue(capacity: int = 1, **kwargs: float) -> tuple[FairQueue, Recorder]:
    queue = FairQueue(lambda: capacity, **kwargs)  # type: ignore[arg-type]
    recorder = Recorder(queue)
    for n in range(capacity):
        recorder.wait("holder", f"holder{n}")
    await settle()
    assert queue.in_flight == capacity
    return queue, recorder


async def test_free_slots_are_taken_at_once_and_given_back() -> None:
    queue = FairQueue(lambda: 2)
    first, second = await queue.acquire("a"), await queue.acquire("b")
    assert queue.in_flight == 2 and first.waited_s == second.waited_s == 0.0
    first.release()
    first.release()  # idempotent
    assert queue.in_flight == 1
    second.release()
    assert queue.in_flight == 0 and queue.tenant_in_flight("a") == 0


async def test_weights_share_released_slots() -> None:
    queue, rec = await full_queue()
    for n in range(8):  # B first: arrival order does not buy B more than its weight
        rec.wait("b", f"b{n}", weight=1.0)
    for n in range(8):
        rec.wait("a", f"a{n}", weight=2.0)
    await settle()
    assert queue.waiting == 16
    for _ in range(9):
        await rec.release_one()
    served = rec.granted[1:10]
    assert sum(name.startswith("a") for name in served) == 6
    assert sum(name.startswith("b") for name in served) == 3
    await rec.close()


async def test_fifo_within_a_tenant() -> None:
    _, rec = await full_queue()
    for n in range(5):
        rec.wait("a", f"a{n}")
        rec.wait("b", f"b{n}")
    await settle()
    for _ in range(10):
        await rec.release_one()
    order = rec.granted[1:]
    assert [n for n in order if n.startswith("a")] == [f"a{i}" for i in range(5)]
    assert [n for n in order if n.startswith("b")] == [f"b{i}" for i in range(5)]
    await rec.close()


async def test_a_late_light_tenant_is_not_starved_by_a_heavy_flood() -> None:
    _, rec = await full_queue()
    for n in range(200):
        rec.wait("flood", f"f{n}", weight=10.0)
    await settle()
    await rec.release_one()  # the flood's virtual time moves on
    rec.wait("light", "light", weight=1.0)
    await settle()
    for _ in range(30):
        await rec.release_one()
    # Tagged at the current virtual time + 1: after at most 10 of the flood's (weight 10), not 199.
    assert "light" in rec.granted
    assert rec.granted.index("light") <= 1 + 1 + 10
    await rec.close()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    queue, rec = await full_queue()
    gone = rec.wait("a", "a0")
    rec.wait("b", "b0")
    await settle()
    assert queue.waiting == 2
    gone.cancel()
    await settle()
    assert queue.waiting == 1
    await rec.release_one()
    assert rec.granted == ["holder0", "b0"]
    assert queue.in_flight == 1 and queue.tenant_in_flight("a") == 0
    await rec.close()


async def test_cancelled_as_it_is_granted_gives_the_slot_back() -> None:
    queue, rec = await full_queue()
    waiter = asyncio.get_running_loop().create_task(queue.acquire("a"))
    rec.wait("b", "b0")
    await settle()
    rec.slots.pop(0).release()  # grants "a" (first in line) ...
    waiter.cancel()  # ... which is cancelled before it ran again
    await settle()
    assert waiter.cancelled()
    assert rec.granted == ["holder0", "b0"]  # the slot went on to b
    assert queue.in_flight == 1 and queue.waiting == 0
    await rec.close()


async def test_wait_is_bounded_with_a_503_and_retry_after() -> None:
    queue, rec = await full_queue(max_wait_s=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueFullError) as caught:
        await queue.acquire("a")
    assert 0.1 <= loop.time() - started < 1.0
    assert caught.value.status_code == 503 and caught.value.headers["retry-after"] == "1"
    assert caught.value.body()["error"]["code"] == "engine_queue_full"
    assert queue.waiting == 0 and queue.in_flight == 1
    await rec.close()


async def test_waiting_requests_are_bounded() -> None:
    queue, rec = await full_queue(max_waiting=2)
    rec.wait("a", "a0")
    rec.wait("a", "a1")
    await settle()
    with pytest.raises(QueueFullError):
        await queue.acquire("b")
    assert queue.waiting == 2
    await rec.close()


async def test_a_tenant_under_its_share_takes_headroom_at_once() -> None:
    queue = FairQueue(lambda: 4, burst=1)
    rec = Recorder(queue)
    for n in range(6):
        rec.wait("flood", f"f{n}")
    await settle()
    assert queue.in_flight == 4 and queue.waiting == 2  # the flood holds every slot, never the headroom
    light = await queue.acquire("light")  # share 2 of 4, holds 0: in at once, beyond the capacity
    assert light.waited_s == 0.0 and queue.in_flight == 5
    with pytest.raises(TimeoutError):  # the headroom is taken: another light tenant waits as anyone
        await asyncio.wait_for(queue.acquire("light2"), 0.2)
    light.release()
    await settle()
    assert queue.in_flight == 4  # a release below capacity+burst goes to no over-share flood waiter
    await rec.close()


async def test_slots_held_elsewhere_count_and_are_rechecked() -> None:
    elsewhere = [2]
    queue = FairQueue(lambda: 2, external=lambda: elsewhere[0])
    task = asyncio.get_running_loop().create_task(queue.acquire("a"))
    await asyncio.sleep(0.1)
    assert not task.done() and queue.waiting == 1
    elsewhere[0] = 1  # another ingress replica's request finished: no event here, seen on re-check
    slot = await asyncio.wait_for(task, 1.0)
    assert queue.in_flight == 1
    slot.release()
