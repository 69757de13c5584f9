"""The regional gateway sends a stream's first event at once on a reused keep-alive connection.

With Nagle's algorithm on the gateway's sockets, the first body write after the response headers
waited for the caller's ACK of those headers, which Linux delays by 40 ms on a connection past its
first exchange: every request the control plane sent over a pooled connection paid 40 ms of TTFT
(found by benchmarks/region_overhead.py). Real uvicorn over loopback, as the control plane calls it.
"""

from __future__ import annotations

import statistics
import time

import httpx

from crosslogic.regions.protocol import GENERATE_PATH
from tests.unit.regions.test_gateway_server import Engine, request_body, running, signed


async def test_first_event_is_not_held_back_on_a_reused_connection() -> None:
    engine = Engine()
    async with running(engine) as url, httpx.AsyncClient(timeout=10) as http:
        delays_ms = []
        for _ in range(8):
            body = request_body()
            started = time.perf_counter()
            async with http.stream("POST", url + GENERATE_PATH, content=body, headers=signed(body)) as response:
                assert response.status_code == 200
                first: float | None = None
                async for _ in response.aiter_raw():
                    first = first or time.perf_counter()
                assert first is not None
                delays_ms.append((first - started) * 1000)
    # The first request opens the connection (quick ACKs then); the rest reuse it. Held back, each
    # took >= 40 ms; sent at once, about 1 ms (the bound leaves room for a loaded machine).
    reused = delays_ms[1:]
    assert statistics.median(reused) < 20, f"first event after {reused} ms on a reused connection"
