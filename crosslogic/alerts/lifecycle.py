"""Build the process's dispatcher from the `alerts:` config, install it, and take it down again."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from crosslogic.alerts.config import AlertsConfig, pagerduty_routing_key, webhook_secret
from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.registry import current_dispatcher, install_dispatcher
from crosslogic.alerts.sinks import AlertSink, PagerDutySink, WebhookSink


def build_sinks(config: AlertsConfig, env: Mapping[str, str] | None = None) -> list[AlertSink]:
    """The configured sinks; ConfigError (one line) when PagerDuty is configured without its key."""
    sinks: list[AlertSink] = []
    if config.webhook is not None:
        sinks.append(WebhookSink(config.webhook.url, secret=webhook_secret(env), timeout_s=config.webhook.timeout_s))
    if config.pagerduty is not None:
        sinks.append(PagerDutySink(pagerduty_routing_key(env), events_url=config.pagerduty.events_url,
                                   timeout_s=config.pagerduty.timeout_s))
    return sinks


def start_alerts(config: AlertsConfig, *, component: str, region: str = "",
                 env: Mapping[str, str] | None = None) -> AlertDispatcher | None:
    """Start and install a dispatcher (call on the process's event loop); None without sinks: alerts
    stay log lines, as before any sink was configured."""
    if not config.has_sinks:
        return None
    host = socket.gethostname()
    dispatcher = AlertDispatcher(
        build_sinks(config, env),
        component=component,
        source=f"{region}/{host}" if region else host,
        dedup_window_s=config.dedup_window_s,
        queue_size=config.queue_size,
        max_attempts=config.max_attempts,
        backoff_base_s=config.backoff_base_s,
        backoff_max_s=config.backoff_max_s,
    )
    dispatcher.start()
    install_dispatcher(dispatcher)
    return dispatcher


async def stop_alerts(dispatcher: AlertDispatcher | None, timeout_s: float = 5.0) -> None:
    if dispatcher is None:
        return
    if current_dispatcher() is dispatcher:
        install_dispatcher(None)
    await dispatcher.close(timeout_s)
