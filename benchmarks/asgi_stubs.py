"""The do-nothing ASGI ends and settle hook that the in-process overhead benchmarks drive an app with
(`metrics_overhead.py`, `tracing_overhead.py`): what they time is the app and its middleware alone."""

from __future__ import annotations

from typing import Any


async def null_send(message: Any) -> None:
    pass


async def empty_request() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def null_settle(outcome: Any) -> None:
    pass


def per_call_us(total_s: float, calls: int) -> float:
    return round(total_s / calls * 1e6, 3)
