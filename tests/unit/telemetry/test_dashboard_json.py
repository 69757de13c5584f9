"""dashboards/crosslogic.json is a Grafana dashboard that imports as is: a datasource variable (no
hard-coded datasource), model and tenant variables, every panel with PromQL targets, unique ids."""

from __future__ import annotations

from tests.dashboard_queries import load_dashboard, metric_names, panel_metrics, panels

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_is_importable_grafana_json() -> None:
    board = load_dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    assert "id" not in board or board["id"] is None  # an id would overwrite another dashboard on import
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels(board) if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "tenant"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"] == DATASOURCE
        assert f", {name})" in variables[name]["definition"]
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"] and target["datasource"] == DATASOURCE
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_cover_red_engines_limits_billing_and_read_our_series() -> None:
    reads = panel_metrics(load_dashboard())
    every = set().union(*reads.values())
    assert all(name.startswith("ray_crosslogic_") for name in every), every
    for wanted in ("ray_crosslogic_requests_total", "ray_crosslogic_ttft_seconds_bucket",
                   "ray_crosslogic_time_per_output_token_seconds_bucket", "ray_crosslogic_engine_waiting",
                   "ray_crosslogic_ratelimit_decisions_total", "ray_crosslogic_billing_meter_events_dead_lettered_total"):
        assert wanted in every
    # Model and tenant variables apply to the RED panels.
    board = load_dashboard()
    red = [t["expr"] for p in panels(board) if p["title"].startswith("Requests / s") for t in p["targets"]]
    assert red and all('model=~"$model"' in e and 'tenant=~"$tenant"' in e for e in red)


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(ray_a_bucket{model=~"$model", x="y(z)"}'
            '[$__rate_interval]))) / ignoring(x) sum(ray_b) + on (m) group_left ray_c offset 5m and bool ray_d')
    assert metric_names(expr) == {"ray_a_bucket", "ray_b", "ray_c", "ray_d"}
