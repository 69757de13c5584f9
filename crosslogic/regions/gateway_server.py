"""The regional gateway: serves this region's engine streams to the control plane, and to no one else.

Every request must carry the control plane's signature (purpose "gateway", this region's secret,
crosslogic/regions/signing.py); anything else gets a 401 before the body is even parsed, and a
replayed nonce is refused. TLS, and mTLS when `client_ca` is set, come on top (`serve_gateway`).

`POST GENERATE_PATH` answers NDJSON, one engine event per line: exactly what a local engine replica
yields, so the control plane relays streams, usage and errors as for a local engine. An empty line
goes out whenever the engine is silent for KEEPALIVE_S (crosslogic/regions/keepalive.py). Once the stream
has started the status is 200 whatever happens: an engine failure travels as an ERROR event.
When the control plane hangs up, the engine iterator is closed, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from crosslogic.api.body import loads, parse, read_capped
from crosslogic.api.errors import install_error_handlers
from crosslogic.api.relay import _ClosingStreamingResponse
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle
from crosslogic.engine.base import ERROR, Endpoint, EngineEvent
from crosslogic.errors import (
    AuthenticationError,
    CrossLogicError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
)
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.keepalive import KEEPALIVE_S, with_keepalives
from crosslogic.regions.protocol import GATEWAY_HEALTH_PATH, GENERATE_PATH, NDJSON, GatewayRequest, encode_event
from crosslogic.regions.signing import (
    DEFAULT_SKEW_S,
    MemoryNonceStore,
    NonceStore,
    SignatureRefused,
    parse_headers,
    verify,
)

logger = logging.getLogger("crosslogic.regions.gateway")


class EngineStream(Protocol):
    """Serves one request: (model, endpoint, body, request_id). `trace_context` (the control plane's
    W3C trace context, crosslogic/tracing) is passed, by keyword, only with a request that carries one."""

    def __call__(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, /,
        *, trace_context: dict[str, str] | None = None,
    ) -> AsyncIterator[EngineEvent]: ...


ServedModels = Callable[[], Iterable[str]]

# The control plane's ingress caps client bodies at 4 MiB; a gateway request wraps one body.
MAX_BODY_BYTES = 8 * 1024 * 1024


def error_event(exc: CrossLogicError) -> EngineEvent:
    """How a failure travels inside a stream: what a local engine replica yields for one."""
    return (ERROR, {**exc.body(), "status": exc.status_code})


def build_gateway_app(
    *,
    region: str,
    secret: bytes,
    stream: EngineStream,
    models: ServedModels,
    skew_s: float = DEFAULT_SKEW_S,
    nonces: NonceStore | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    auth_throttle: AuthThrottleConfig | None = None,
) -> FastAPI:
    nonce_store = nonces if nonces is not None else MemoryNonceStore(skew_s)
    throttle = FailedAuthThrottle(auth_throttle)
    app = FastAPI(title=f"CrossLogic regional gateway {region}", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    async def authenticate(request: Request) -> bytes:
        """The request's body once its signature is proven, else AuthenticationError (401)."""
        try:
            signed = parse_headers(request.headers)
            if signed.region != region:
                raise SignatureRefused("unknown_region", f"this gateway serves region '{region}'")
            body = await read_capped(request, max_body_bytes)
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            verify(secret, signed, purpose="gateway", method=request.method, path=path, body=body, skew_s=skew_s)
            if not await nonce_store.claim(signed.region, signed.nonce, signed.timestamp):
                raise SignatureRefused("replayed_nonce", "this request was already received (replayed nonce)")
        except SignatureRefused as refused:
            client = throttle.client_of(request.scope)
            # Past the address's failure budget: 429 (raised here) and no log line, so a flood
            # neither fills the logs nor earns answers. Never checked before verifying: a correctly
            # signed call (the control plane) always passes, whoever shares its address.
            throttle.fail(client)
            # INFO, not WARNING: anyone who can reach the port can make these.
            logger.info("refused %s %s from %s: %s", request.method, request.url.path, client, refused.reason)
            raise AuthenticationError(refused.message, code=refused.reason) from None
        return body

    @app.get(GATEWAY_HEALTH_PATH)
    async def health(request: Request) -> JSONResponse:
        await authenticate(request)
        served = sorted(models())
        return JSONResponse({"region": region, "ok": bool(served), "models": served})

    @app.post(GENERATE_PATH)
    async def generate(request: Request) -> Any:
        raw = await authenticate(request)
        data = loads(raw)
        if not isinstance(data, dict):
            raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
        call = parse(GatewayRequest, data)
        if call.model not in set(models()):
            raise ModelNotFoundError(f"region '{region}' does not serve model '{call.model}'", param="model")
        events = _ndjson(stream, call)

        async def close() -> None:
            # The response closes `events` on every exit; if it never started there is nothing to abort.
            with contextlib.suppress(RuntimeError):
                await events.aclose()

        return _ClosingStreamingResponse(events, close, media_type=NDJSON)

    return app


async def _ndjson(stream: EngineStream, call: GatewayRequest) -> AsyncGenerator[bytes, None]:
    events: AsyncIterator[EngineEvent] | None = None
    try:
        if call.trace_context:
            trace_context: dict[str, str] = dict(call.trace_context.items())
            events = stream(call.model, call.endpoint, call.body, call.request_id, trace_context=trace_context)
        else:
            events = stream(call.model, call.endpoint, call.body, call.request_id)
        async for event in with_keepalives(events, KEEPALIVE_S, None):
            yield b"\n" if event is None else encode_event(event)
    except CrossLogicError as exc:
        yield encode_event(error_event(exc))
    except Exception:
        # A bug or an unmapped failure: the traceback stays here, the control plane gets a 502.
        logger.exception("engine stream for request %s failed", call.request_id)
        yield encode_event(error_event(UpstreamError("The regional engine failed while handling the request.")))
    finally:
        # Also on GeneratorExit (the control plane hung up): closing the engine's iterator aborts
        # its request in the engine.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class GatewayServer:
    """A gateway's uvicorn running in this process's event loop."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str

    @property
    def running(self) -> bool:
        return not self.task.done()

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
        if not self.task.done():
            self.task.cancel()


class _EmbeddedServer(uvicorn.Server):
    # The host process (a Ray replica, a test) owns SIGINT/SIGTERM: uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _ssl_options(config: GatewayListenConfig) -> dict[str, Any]:
    if config.tls_certfile is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": config.tls_certfile, "ssl_keyfile": config.tls_keyfile}
    if config.client_ca is not None:
        options.update(ssl_ca_certs=config.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


async def serve_gateway(app: FastAPI, config: GatewayListenConfig) -> tuple[GatewayServer, str]:
    """Run `app` on config.host:port (0: a free port) in the current event loop; (server, URL to dial).

    We bind the socket ourselves: a busy port is an OSError here (uvicorn would `sys.exit`), and the
    port bound is known before the URL is advertised.
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets whose proto says
    # TCP. With Nagle on, a stream's first event waited for the ACK of the response headers, which the
    # control plane delays (40 ms on Linux) on every reused keep-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    uv_config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=5,
        **_ssl_options(config),
    )
    try:
        uv_config.load()  # unreadable TLS files fail here, as an exception (not uvicorn's exit)
    except Exception:
        sock.close()
        raise
    server = _EmbeddedServer(uv_config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # the start-up failure (bad TLS files, ...)
            raise RuntimeError("the regional gateway stopped while starting")
        await asyncio.sleep(0.01)
    scheme = "https" if config.tls_certfile else "http"
    host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    url = config.advertise_url or f"{scheme}://{host}:{port}"
    logger.info("regional gateway listening on %s://%s:%d%s", scheme, host, port,
                " (mTLS)" if config.client_ca else "")
    return GatewayServer(server=server, task=task, url=url), url
