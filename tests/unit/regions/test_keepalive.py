"""with_keepalives (crosslogic/regions/keepalive.py): keep-alives only while the source is silent, the
source's items unchanged, and closing early cancels the source where it waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from crosslogic.regions.keepalive import with_keepalives


async def test_keepalives_fill_only_the_silences() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.35)
        yield 2
        yield 3

    got = [item async for item in with_keepalives(source(), 0.1, 0)]
    assert got[0] == 1 and got[-2:] == [2, 3]
    assert 2 <= got.count(0) <= 4 and set(got[1:-2]) == {0}


async def test_closing_early_cancels_the_source_where_it_waits() -> None:
    cancelled = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        yield 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield 2

    stream = with_keepalives(source(), 0.05, 0)
    assert await anext(stream) == 1
    assert await anext(stream) == 0  # silence: a keep-alive
    await stream.aclose()  # type: ignore[attr-defined]
    assert cancelled.is_set()


async def test_a_source_failure_reaches_the_consumer() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        raise ValueError("engine failed")

    stream = with_keepalives(source(), 1.0, 0)
    assert await anext(stream) == 1
    try:
        await anext(stream)
    except ValueError as exc:
        assert str(exc) == "engine failed"
    else:
        raise AssertionError("the failure was swallowed")
