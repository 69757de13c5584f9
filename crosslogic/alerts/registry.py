"""The process's alert dispatcher, where `crosslogic.metering.metrics.alert()` finds it.

Module-level on purpose, and the only such state here: `alert()` is called from deep inside
components (the usage recorder, the supervisor, billing) that should not each carry a dispatcher. The
ingress and the billing actor install one at start; tests install theirs and put `None` back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crosslogic.alerts.dispatcher import AlertDispatcher

_installed: list[AlertDispatcher] = []


def install_dispatcher(dispatcher: AlertDispatcher | None) -> AlertDispatcher | None:
    """Make `dispatcher` (or none: logging only) the process's; returns the one it replaces."""
    previous = _installed[0] if _installed else None
    _installed.clear()
    if dispatcher is not None:
        _installed.append(dispatcher)
    return previous


def current_dispatcher() -> AlertDispatcher | None:
    return _installed[0] if _installed else None
