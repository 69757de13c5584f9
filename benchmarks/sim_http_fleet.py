"""A fleet of engine-simulator replicas as OpenAI-compatible HTTP endpoints, in one process: the
upstreams a peer proxy (LiteLLM) routes over in `ingress_capacity.py`. A SIMULATOR, for benchmarks only.

Replica i answers under `/r/{i}/v1/chat/completions` (and `/r/{i}/v1/models`, `/health`), with its own
`SimulatorEngine` (crosslogic/engine/simulator.py: its own queue, batch and speed), on one listening
port: N endpoints cost one socket, not N processes. Run as a script:

    python benchmarks/sim_http_fleet.py --replicas 64 --port 8123 --settings '{"decode_tokens_per_s": 1000}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.base import CHUNK, ERROR, RESPONSE
from crosslogic.engine.simulator import SimulatorEngine


def fleet_app(model: str, replicas: int, settings: dict[str, Any]) -> Starlette:
    config = ModelDeploymentConfig.model_validate(
        {"served_name": model, "source": "simulated", "engine": {"kind": "simulator", "simulator": settings}})
    engines = [SimulatorEngine(config, rank) for rank in range(replicas)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for engine in engines:
            await engine.start()
        yield
        for engine in engines:
            await engine.shutdown()

    def engine_of(request: Request) -> SimulatorEngine | None:
        index = int(request.path_params["replica"])
        return engines[index] if 0 <= index < len(engines) else None

    async def chat(request: Request) -> Response:
        engine = engine_of(request)
        if engine is None:
            return JSONResponse({"error": {"message": "no such replica"}}, status_code=404)
        body = await request.json()
        events = engine.generate("chat", body, uuid.uuid4().hex).__aiter__()
        first = await anext(events)
        if first[0] == ERROR:
            return JSONResponse({"error": first[1]["error"]}, status_code=int(first[1].get("status", 500)))
        if first[0] == RESPONSE:
            return JSONResponse(first[1])

        async def sse() -> AsyncIterator[str]:
            event: tuple[Any, ...] | None = first
            while event is not None:
                if event[0] == CHUNK:
                    yield event[1]
                event = await anext(events, None)

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "sim"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "replicas": len(engines)})

    return Starlette(
        routes=[
            Route("/r/{replica:int}/v1/chat/completions", chat, methods=["POST"]),
            Route("/r/{replica:int}/v1/models", models),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="sim")
    parser.add_argument("--settings", default="{}", help="SimulatorConfig fields as JSON")
    args = parser.parse_args()
    app = fleet_app(args.model, args.replicas, json.loads(args.settings))
    asyncio.run(uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop="asyncio")).serve())


if __name__ == "__main__":
    main()
