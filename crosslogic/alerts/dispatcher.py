"""AlertDispatcher: hands alerts to every sink from a background task, never from the caller.

`submit()` is called from wherever an alert is raised (a hot path, a failing loop, another thread): it
never blocks, never raises and never does I/O. Each sink has its own bounded queue and drain task, so
a sink that is down (retrying with backoff) delays neither the caller nor the other sinks; a full
queue drops new alerts for that sink (counted, one log line per episode) instead of growing memory.

De-duplication is by (name, key): a trigger for an alert already triggered within `dedup_window_s`
sends nothing new (a loop finding the same problem every second pages once); a resolve is sent only
for an alert this dispatcher triggered, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from crosslogic.alerts.model import Alert
from crosslogic.alerts.sinks import AlertRefused, AlertSink, SinkUnavailable
from crosslogic.backoff import Backoff
from crosslogic.metering.metrics import Metrics

log = logging.getLogger("crosslogic.alerts.dispatcher")


class _Lane:
    """One sink's queue and drain task: what isolates the sinks from each other."""

    def __init__(self, sink: AlertSink, queue_size: int) -> None:
        self.sink = sink
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self.task: asyncio.Task[None] | None = None
        self.overflowing = False


class AlertDispatcher:
    def __init__(
        self,
        sinks: Sequence[AlertSink],
        *,
        component: str = "",
        source: str = "",
        dedup_window_s: float = 300.0,
        queue_size: int = 1000,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lanes = [_Lane(sink, queue_size) for sink in sinks]
        self._component = component
        self._source = source
        self._dedup_window_s = dedup_window_s
        self._max_attempts = max_attempts
        # Full jitter: every ingress replica retries the same receiver; spread out, they do not
        # arrive together again after its outage.
        self._backoff = Backoff(backoff_base_s, backoff_max_s)
        self._clock = clock
        # (name, key) -> when its last trigger was sent; present while triggered and not resolved.
        self._active: dict[tuple[str, str], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics("crosslogic_alerts")

    @property
    def sinks(self) -> list[str]:
        return [lane.sink.name for lane in self._lanes]

    def start(self) -> None:
        """Start the drain tasks on the running loop (alerts submitted before are kept)."""
        self._loop = asyncio.get_running_loop()
        for lane in self._lanes:
            if lane.task is None:
                lane.task = self._loop.create_task(self._drain(lane), name=f"alerts-{lane.sink.name}")

    def submit(self, alert: Alert) -> None:
        """Queue `alert` for every sink. Never blocks, never raises."""
        try:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is not loop:
                    # asyncio queues are not thread-safe: from another thread, hop onto our loop.
                    loop.call_soon_threadsafe(self._accept, alert)
                    return
            self._accept(alert)
        except Exception:  # an alert path must never take its caller down
            log.exception("could not queue alert %s", alert.name)

    def _accept(self, alert: Alert) -> None:
        if not alert.source or not alert.component:
            alert = alert.model_copy(update={"source": alert.source or self._source,
                                             "component": alert.component or self._component})
        slot = (alert.name, alert.key)
        now = self._clock()
        if alert.state == "trigger":
            last = self._active.get(slot)
            if last is not None and now - last < self._dedup_window_s:
                self.metrics.inc("deduplicated_total")
                return
            self._active[slot] = now
        else:
            if self._active.pop(slot, None) is None:
                self.metrics.inc("deduplicated_total")  # nothing of ours to resolve, or resolved already
                return
        self.metrics.inc(f"{alert.state}_total")
        for lane in self._lanes:
            self._offer(lane, alert)

    def _offer(self, lane: _Lane, alert: Alert) -> None:
        try:
            lane.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.metrics.inc(f"{lane.sink.name}_dropped_total")
            if not lane.overflowing:
                lane.overflowing = True
                log.error("alert queue for sink %s is full (%d); dropping alerts until it drains (first: %s)",
                          lane.sink.name, lane.queue.maxsize, alert.name)

    async def _drain(self, lane: _Lane) -> None:
        while True:
            alert = await lane.queue.get()
            try:
                await self._deliver(lane.sink, alert)
            finally:
                lane.queue.task_done()
            if lane.queue.empty():
                lane.overflowing = False

    async def _deliver(self, sink: AlertSink, alert: Alert) -> None:
        prefix = sink.name
        for attempt in range(1, self._max_attempts + 1):
            try:
                await sink.send(alert)
            except AlertRefused as exc:
                self.metrics.inc(f"{prefix}_refused_total")
                log.error("alert %s (%s) refused by %s, not retried: %s", alert.name, alert.state, sink.name, exc)
                return
            except Exception as exc:  # SinkUnavailable, or a sink's own bug: both bounded by max_attempts
                if attempt == self._max_attempts:
                    self.metrics.inc(f"{prefix}_failed_total")
                    log.error("alert %s (%s) not delivered to %s after %d attempts: %s",
                              alert.name, alert.state, sink.name, attempt, exc)
                    return
                # The receiver's Retry-After (429, 503) is waited for, within the cap.
                retry_after_s = exc.retry_after_s if isinstance(exc, SinkUnavailable) else None
                delay = self._backoff.delay(attempt, retry_after_s=retry_after_s)
                self.metrics.inc(f"{prefix}_retries_total")
                log.warning("alert %s to %s failed (attempt %d): %s; retrying in %.2fs",
                            alert.name, sink.name, attempt, exc, delay)
                await asyncio.sleep(delay)
            else:
                self.metrics.inc(f"{prefix}_sent_total")
                return

    async def close(self, timeout_s: float = 5.0) -> None:
        """Give queued alerts `timeout_s` to go out (a shutdown's last alerts matter), then stop."""
        waits = [lane.queue.join() for lane in self._lanes if lane.task is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
            await lane.sink.aclose()
