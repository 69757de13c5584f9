"""The metric names a Grafana dashboard's PromQL expressions read (for the dashboard tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "crosslogic.json"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Numbers and durations ("5m", "1h30m", "0.99"): not identifiers, though their units look like ones.
_NUMBERS = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:(?:ms|[smhdwy])\d*)*\b")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring",
             "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """Identifiers left once strings, label matchers, ranges and grouping clauses are removed, that
    are not functions (followed by "(") or operators."""
    rest = _NUMBERS.sub(" ", _BRACES.sub(" ", _GROUPING.sub(" ", _STRINGS.sub(" ", expr))))
    names = set()
    for match in _IDENT.finditer(rest):
        after = rest[match.end():].lstrip()
        if after.startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included (rows themselves excluded)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def panel_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> the metric names its queries read."""
    return {p["title"]: set().union(*(metric_names(t["expr"]) for t in p["targets"])) for p in panels(dashboard)}
