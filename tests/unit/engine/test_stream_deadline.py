"""The bound on a started engine stream's silence (crosslogic/engine/stream_deadline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from crosslogic.engine.stream_deadline import StreamStalled, with_idle_deadline


async def _paced(gaps: list[float], seen: list[str]) -> AsyncIterator[int]:
    """Yields i after sleeping gaps[i]; records how it ended."""
    try:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield i
        seen.append("finished")
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise


async def test_items_pass_through_and_the_end_ends_it() -> None:
    seen: list[str] = []
    got = [i async for i in with_idle_deadline(_paced([0.0, 0.01, 0.01], seen), 1.0)]
    assert got == [0, 1, 2] and seen == ["finished"]


async def test_the_wait_for_the_first_event_is_not_bounded() -> None:
    # A request queued in the engine may wait longer than the bound for its first token.
    seen: list[str] = []
    got = [i async for i in with_idle_deadline(_paced([0.3, 0.0], seen), 0.1)]
    assert got == [0, 1]


async def test_a_silence_after_the_first_event_raises_and_cancels_the_pending_read() -> None:
    seen: list[str] = []
    got: list[int] = []
    started = asyncio.get_running_loop().time()
    with pytest.raises(StreamStalled) as raised:
        async for i in with_idle_deadline(_paced([0.0, 0.01, 30.0], seen), 0.2):
            got.append(i)
    assert got == [0, 1]
    assert raised.value.silent_s == 0.2
    assert seen == ["cancelled"]  # the source saw the cancellation where it waited
    assert asyncio.get_running_loop().time() - started < 5


async def test_none_turns_the_bound_off() -> None:
    seen: list[str] = []
    got = [i async for i in with_idle_deadline(_paced([0.0, 0.3], seen), None)]
    assert got == [0, 1] and seen == ["finished"]


async def test_an_error_of_the_source_is_raised_as_is() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.01)
        raise RuntimeError("replica died")

    with pytest.raises(RuntimeError, match="replica died"):
        async for _ in with_idle_deadline(failing(), 1.0):
            pass


async def test_a_timeout_of_the_source_itself_is_not_taken_for_a_stall() -> None:
    async def timing_out() -> AsyncIterator[int]:
        yield 1
        raise TimeoutError("the source's own")

    with pytest.raises(TimeoutError, match="the source's own"):
        async for _ in with_idle_deadline(timing_out(), 5.0):
            pass
