"""The control plane's client to regional gateways: one signed POST per request, NDJSON engine events back.

Events come out exactly as a local engine replica yields them (crosslogic/engine/base.py), so the
relay treats a remote engine like a local one. Failures map onto the relay's retry rule:

- before the first event (connection refused, connect timeout, a non-200 answer such as 401 or 503):
  a retryable error, so the relay tries another placement (`ServiceUnavailableError` when the
  region cannot be reached or says it has no capacity, `UpstreamError` otherwise);
- after it (the connection breaks, a malformed line): `UpstreamError`, which the relay turns into an
  error event at the end of the stream, as for a local replica that died.

Closing the iterator early (client gone) closes the HTTP response; the gateway sees the connection
go and aborts the engine request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from crosslogic.engine.base import Endpoint, EngineEvent
from crosslogic.errors import CrossLogicError, ServiceUnavailableError, UpstreamError
from crosslogic.regions.config import MASTER_SECRET_ENV, RegionsConfig, TlsClientConfig
from crosslogic.regions.protocol import GENERATE_PATH, NDJSON, GatewayRequest, decode_event
from crosslogic.regions.signing import derive_region_secret, sign

logger = logging.getLogger(__name__)

# Writing a request body is quick; a peer that stops reading it for this long is gone.
_WRITE_TIMEOUT_S = 30.0


class RegionTarget(Protocol):
    """What the client needs of a region (crosslogic.regions.state.RegionView has it)."""

    name: str
    gateway_url: str
    secret_generation: int


def tls_context(tls: TlsClientConfig) -> ssl.SSLContext:
    """Trust `ca_bundle` (the system's CAs without one) and present the client certificate if set."""
    context = ssl.create_default_context(cafile=tls.ca_bundle)
    if tls.client_cert is not None:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


def generate_url(gateway_url: str) -> str:
    return gateway_url.rstrip("/") + GENERATE_PATH


class RegionClient:
    """One per ingress replica: a pooled HTTP/1.1 client (keep-alive), shared by every region."""

    def __init__(self, config: RegionsConfig, master_secret: bytes) -> None:
        self._master = master_secret
        self._secrets: dict[tuple[str, int], bytes] = {}
        self._http = httpx.AsyncClient(
            verify=tls_context(config.tls),
            # The read timeout is per read, not per stream: the gateway writes a keep-alive line
            # whenever its engine is silent (crosslogic/regions/keepalive.py), so only a region gone
            # silent (a lost node or link, which closes nothing) reaches it. The connect timeout
            # finds a region that is down.
            timeout=httpx.Timeout(
                connect=config.connect_timeout_s, read=config.stream_idle_timeout_s, write=_WRITE_TIMEOUT_S,
                pool=config.connect_timeout_s,
            ),
            # One connection per stream in flight: no cap (a cap would queue streams behind others).
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
        )

    def _secret(self, region: str, generation: int) -> bytes:
        key = (region, generation)
        secret = self._secrets.get(key)
        if secret is None:
            secret = self._secrets[key] = derive_region_secret(self._master, region, generation)
        return secret

    async def stream(
        self, region: RegionTarget, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str,
        *, trace_context: dict[str, str] | None = None,
    ) -> AsyncGenerator[EngineEvent, None]:
        """Serve one request in `region`; see the module docstring for the errors it raises.
        `trace_context`: the W3C trace context the region's engine span continues (crosslogic/tracing)."""
        payload = GatewayRequest.model_validate(
            {"model": model, "endpoint": endpoint, "body": body, "request_id": request_id,
             "trace_context": trace_context})
        # exclude_none: an untraced request's body is what it was before tracing (no trace_context key).
        content = payload.model_dump_json(exclude_none=True).encode()
        url = generate_url(region.gateway_url)
        headers = sign(
            self._secret(region.name, region.secret_generation), purpose="gateway", region=region.name,
            method="POST", path=urlsplit(url).path, body=content,
        )
        headers = {**headers, "content-type": "application/json", "accept": NDJSON}
        request = self._http.build_request("POST", url, content=content, headers=headers)
        try:
            response = await self._http.send(request, stream=True)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.ProtocolError) as exc:
            logger.warning("region %s unreachable at %s (request %s): %r", region.name, url, request_id, exc)
            raise ServiceUnavailableError(f"region '{region.name}' is unreachable") from None
        try:
            if response.status_code != 200:
                raise await _refusal(region, response, request_id)
            async for event in _events(region, response, request_id):
                yield event
        finally:
            # Early close (client gone, a retry elsewhere) drops the connection: the gateway aborts.
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()


async def _refusal(region: RegionTarget, response: httpx.Response, request_id: str) -> CrossLogicError:
    """The retryable error for a gateway that answered, but not with a stream."""
    try:
        detail = (await response.aread())[:500].decode(errors="replace")
    except httpx.HTTPError:
        detail = ""
    status = response.status_code
    if status in (401, 403):
        # Never the client's fault: our master secret or the region's secret generation is wrong.
        logger.error(
            "region %s refused our signature (%d) on request %s: check %s on the control plane and the "
            "region's secret generation (crosslogic admin regions); gateway said: %s",
            region.name, status, request_id, MASTER_SECRET_ENV, detail,
        )
        return UpstreamError(f"region '{region.name}' refused the control plane's credential")
    logger.warning("region %s answered %d to request %s: %s", region.name, status, request_id, detail)
    if status in (429, 503):
        return ServiceUnavailableError(f"region '{region.name}' has no capacity right now")
    return UpstreamError(f"region '{region.name}' failed the request ({status})")


async def _events(region: RegionTarget, response: httpx.Response, request_id: str) -> AsyncIterator[EngineEvent]:
    try:
        async for line in response.aiter_lines():
            if not line:
                continue
            try:
                event = decode_event(line)
            except ValueError:
                logger.error("region %s sent a malformed event on request %s: %.200r", region.name, request_id, line)
                raise UpstreamError(f"region '{region.name}' sent a malformed event") from None
            yield event
    except httpx.HTTPError as exc:
        logger.warning("region %s stream broke on request %s: %r", region.name, request_id, exc)
        raise UpstreamError(f"the connection to region '{region.name}' broke during the request") from None
