"""The regional agent: tells the control plane, every few seconds, that this region is alive and how
loaded it is (replicas' queue depth, models, cards, versions), signed with the region's secret.

The first accepted heartbeat registers the region; the control plane drains a region whose beats
stop. The loop never dies: a refusal (bad secret, version mismatch, disabled region) is logged with
the control plane's own message, loudly once per distinct message rather than every beat, and the
agent backs off (up to `BACKOFF_INTERVALS` intervals) and keeps trying, so the region comes back by
itself once the operator fixes the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from crosslogic.backoff import Backoff
from crosslogic.engine.base import ModelCard
from crosslogic.regions.app_config import AgentConfig
from crosslogic.regions.gateway_client import tls_context
from crosslogic.regions.protocol import HEARTBEAT_PATH, Heartbeat, RemoteReplica, VersionSet
from crosslogic.regions.signing import sign
from crosslogic.regions.versions import local_versions
from crosslogic.supervisor import LoopRestarts, supervise

logger = logging.getLogger("crosslogic.regions.agent")

# After failures the agent waits interval * 2^n, at most this many intervals: a control plane
# coming back sees the region again within seconds, and a refused region does not hammer it.
BACKOFF_INTERVALS = 5.0


@dataclass
class RegionSnapshot:
    """What this region serves right now (the agent's `collect()`)."""

    replicas: list[RemoteReplica] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    cards: list[ModelCard] = field(default_factory=list)


Collect = Callable[[], Awaitable[RegionSnapshot]]


@dataclass
class AgentOutcome:
    """The last heartbeat's fate, for readiness and the operator."""

    ok: bool
    at: float
    # HTTP status of the control plane's answer; None when it could not be reached.
    status: int | None = None
    message: str = ""
    consecutive_failures: int = 0


def new_agent_id(started_at: float | None = None) -> str:
    host = socket.gethostname()[:60]
    return f"{host}:{os.getpid()}:{int(started_at if started_at is not None else time.time())}"


def _refusal_message(response: httpx.Response) -> str:
    """The control plane's error message (OpenAI-shaped body), else the start of whatever it sent."""
    try:
        error = response.json().get("error") or {}
        message = str(error.get("message") or "")
        code = error.get("code")
        if message:
            return f"{message} ({code})" if code else message
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


class RegionAgent:
    def __init__(
        self,
        *,
        region: str,
        secret: bytes,
        gateway_url: str,
        config: AgentConfig,
        collect: Collect,
        versions: VersionSet | None = None,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._region = region
        self._restarts = restarts
        self._secret = secret
        self._gateway_url = gateway_url
        self._config = config
        self._collect = collect
        self._versions = versions or local_versions()
        self._url = config.control_plane_url.rstrip("/") + HEARTBEAT_PATH
        self._signed_path = urlsplit(self._url).path
        self.agent_id = new_agent_id()
        self.last: AgentOutcome | None = None
        self._failures = 0
        # No jitter: one agent per region, and the operator reads the gaps between refusals in the log.
        self._backoff = Backoff(2 * config.interval_s, BACKOFF_INTERVALS * config.interval_s, jitter=0.0)
        self._logged: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        tls = config.tls
        self._http = httpx.AsyncClient(
            verify=tls_context(tls) if config.control_plane_url.startswith("https://") else True,
            timeout=config.timeout_s,
            follow_redirects=False,
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(supervise(
                "region_agent", self._run, restarts=self._restarts, backoff_base_s=self._config.interval_s,
                backoff_max_s=self._config.interval_s * BACKOFF_INTERVALS,
            ), name=f"region-agent-{self._region}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    def next_delay(self) -> float:
        if self._failures == 0:
            return self._config.interval_s
        return self._backoff.delay(self._failures)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # never let the loop die: it is the region's lifeline
                self._fail(None, f"heartbeat failed: {exc!r}")
            await asyncio.sleep(self.next_delay())

    async def beat(self) -> AgentOutcome:
        """Collect, sign and send one heartbeat; the outcome is also kept in `last`."""
        snapshot = await self._collect()
        heartbeat = Heartbeat(
            region=self._region, gateway_url=self._gateway_url, models=snapshot.models, cards=snapshot.cards,
            replicas=snapshot.replicas, versions=self._versions, interval_s=self._config.interval_s,
            agent_id=self.agent_id,
        )
        body = heartbeat.model_dump_json().encode()
        headers = sign(self._secret, purpose="agent", region=self._region, method="POST",
                       path=self._signed_path, body=body)
        try:
            response = await self._http.post(
                self._url, content=body, headers={**headers, "content-type": "application/json"})
        except httpx.HTTPError as exc:
            return self._fail(None, f"control plane unreachable at {self._url}: {type(exc).__name__}: {exc}")
        if response.status_code == 200:
            return self._succeed(response.status_code)
        return self._fail(response.status_code, _refusal_message(response))

    def _succeed(self, status: int) -> AgentOutcome:
        if self._failures:
            logger.warning("region %s: heartbeat accepted again after %d failures", self._region, self._failures)
        elif self.last is None:
            logger.info("region %s registered with the control plane (%s)", self._region, self._url)
        self._failures = 0
        self._logged.clear()
        self.last = AgentOutcome(ok=True, at=time.time(), status=status)
        return self.last

    def _fail(self, status: int | None, message: str) -> AgentOutcome:
        self._failures += 1
        # Loud once per distinct message (a version mismatch names both sides' versions: the
        # operator must see it), quiet while it repeats.
        if message not in self._logged:
            if len(self._logged) >= 100:  # messages that vary (a skew in seconds) must not pile up
                self._logged.clear()
            self._logged.add(message)
            what = f"refused the heartbeat (HTTP {status})" if status is not None else "did not take the heartbeat"
            logger.error("region %s: the control plane %s: %s; retrying with backoff", self._region, what, message)
        else:
            logger.debug("region %s: heartbeat still failing (%d): %s", self._region, self._failures, message)
        self.last = AgentOutcome(
            ok=False, at=time.time(), status=status, message=message, consecutive_failures=self._failures
        )
        return self.last
