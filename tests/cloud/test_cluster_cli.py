"""`crosslogic cluster ...` from the main environment, driving SkyPilot in .venv-cloud.

Nothing is launched: `up --print-task` renders the task SkyPilot would launch, and `status` runs
against SkyPilot's real local API server in a HOME of its own (no clusters there) and a control
plane that is not listening. SkyPilot's cloud is the boundary we cannot reach.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import yaml

from crosslogic.admin.routes_regions import region_status
from crosslogic.cli.cluster import merge
from crosslogic.cloud import task_spec as spec
from crosslogic.localstack.ray_cluster import free_port
from crosslogic.regions.registry import RegionRecord
from tests.cloud.conftest import CROSSLOGIC, offline

SECRET = "ab" * 32


def crosslogic(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CROSSLOGIC, *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=spec.REPO_ROOT, stdin=subprocess.DEVNULL,
    )


def printed_task(stdout: str) -> dict:
    first, _, rest = stdout.partition("\n")
    assert first == "# cluster: crosslogic-eu-west"
    return yaml.safe_load(rest)


@pytest.mark.usefixtures("cloud_python")
def test_print_task_shows_the_overrides(sky_home: dict[str, str]) -> None:
    env = {
        **sky_home, "CROSSLOGIC_REGION_SECRET": SECRET, "HF_TOKEN": "hf_" + SECRET,
        "CROSSLOGIC_URL": "https://cp.example.com",
    }
    result = crosslogic(
        ["cluster", "up", "--region", "eu-west", "--accelerators", "H100:1", "--spot", "--print-task",
         "--env", "CROSSLOGIC_MODELS=llama=meta-llama/Llama-3.1-8B-Instruct"],
        env,
    )
    assert result.returncode == 0, result.stderr
    task = printed_task(result.stdout)
    candidates = task["resources"]["ordered"]
    # --accelerators replaced the YAML's three GPUs; --spot: spot first, then the same GPU on demand.
    assert [(c["accelerators"], c["use_spot"]) for c in candidates] == [({"H100": 1}, True), ({"H100": 1}, False)]
    assert all(c["ports"] == ["8443"] and c["disk_size"] == 512 for c in candidates)
    envs = task["envs"]
    assert envs["CROSSLOGIC_REGION"] == "eu-west"
    assert envs["CROSSLOGIC_CONTROL_PLANE_URL"] == "https://cp.example.com"
    assert envs["CROSSLOGIC_MODELS"] == "llama=meta-llama/Llama-3.1-8B-Instruct"
    assert {k: envs[v] for k, v in spec.VERSION_ENVS.items()} == spec.load_versions()
    assert task["workdir"] == str(spec.REPO_ROOT)
    # The secret reached SkyPilot (it is listed) but is never printed.
    assert task["secrets"] == {"CROSSLOGIC_REGION_SECRET": "<redacted>", "HF_TOKEN": "<redacted>"}
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.usefixtures("cloud_python")
def test_print_task_on_demand_only_and_pinned_cloud(sky_home: dict[str, str]) -> None:
    result = crosslogic(
        ["cluster", "up", "--region", "eu-west", "--cloud", "aws/eu-west-1", "--print-task",
         "--control-plane-url", "https://cp.example.com"],
        sky_home,
    )
    assert result.returncode == 0, result.stderr
    task = printed_task(result.stdout)
    candidates = task["resources"]["ordered"]
    assert [(c["accelerators"], c["use_spot"]) for c in candidates] == [
        ({"H100": 1}, False), ({"A100-80GB": 1}, False), ({"L40S": 1}, False)
    ]
    assert {c["infra"] for c in candidates} == {"aws/eu-west-1"}
    # No secret in the environment: shown as unset, and a launch would refuse.
    assert task["secrets"] == {"CROSSLOGIC_REGION_SECRET": "<unset>"}
    assert "CROSSLOGIC_REGION_SECRET unset" in result.stderr


@pytest.mark.usefixtures("cloud_python")
def test_print_task_control_plane_cloud_pinned(sky_home: dict[str, str]) -> None:
    result = crosslogic(["cluster", "up", "--control-plane", "--cloud", "gcp", "--print-task"], sky_home)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition("\n")
    assert first == f"# cluster: {spec.CONTROL_PLANE_CLUSTER}"
    resources = yaml.safe_load(rest)["resources"]
    # --cloud replaced the any_of list of clouds with one pinned infra.
    assert "any_of" not in resources and resources["infra"] == "gcp"
    assert resources["ports"] == ["8000"]


@pytest.mark.usefixtures("cloud_python")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "EU_West"], "region 'EU_West'"),
        (["--region", "eu-west", "--env", "CROSSLOGIC_VLLM_VERSION=0.31.0"], "versions.yaml only"),
        (["--region", "eu-west", "--env", "NOT_DECLARED=1"], "not an env the task declares"),
        (["--region", "eu-west", "--accelerators", "H100:one"], "expected NAME or NAME:COUNT"),
        (["--control-plane", "--accelerators", "H100:1"], "needs no accelerators"),
    ],
)
def test_up_refuses_bad_requests(sky_home: dict[str, str], args: list[str], message: str) -> None:
    env = {**sky_home, "CROSSLOGIC_URL": "https://cp.example.com"}
    result = crosslogic(["cluster", "up", *args, "--print-task"], env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("cloud_python")
def test_up_refuses_a_loopback_control_plane_and_missing_secret_before_skypilot(sky_home: dict[str, str]) -> None:
    env = {**sky_home, "CROSSLOGIC_URL": "https://cp.example.com"}
    result = crosslogic(["cluster", "up", "--region", "eu-west"], env)
    assert result.returncode == 2
    assert "set CROSSLOGIC_REGION_SECRET" in result.stderr
    env = {**env, "CROSSLOGIC_URL": "http://127.0.0.1:8000", "CROSSLOGIC_REGION_SECRET": SECRET}
    result = crosslogic(["cluster", "up", "--region", "eu-west"], env)
    assert result.returncode == 2
    assert "loopback" in result.stderr
    # Refused before any SkyPilot call: no API server was started.
    assert not (Path(sky_home["HOME"]) / ".sky" / "api_server").exists()


def test_missing_cloud_env_is_one_clear_line(sky_home: dict[str, str]) -> None:
    env = {**sky_home, "CROSSLOGIC_CLOUD_PYTHON": str(Path(sky_home["HOME"]) / "no-such-python")}
    result = crosslogic(["cluster", "up", "--region", "eu-west", "--print-task"], env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "run `make cloud-env`" in result.stderr


def _stop_api_server(env: dict[str, str], port: int, cloud_python: Path) -> None:
    """SkyPilot's own stop, then any process of ours still serving that port (found by its
    command line, which names the port this test picked)."""
    subprocess.run(offline([str(cloud_python.parent / "sky"), "api", "stop"]), env=env, capture_output=True, timeout=60)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "sky.server.server" in cmdline and f"--port={port}" in cmdline:
            for child in proc.children(recursive=True):
                child.kill()
            proc.kill()


def test_status_and_down_with_no_clusters_and_the_control_plane_down(
    sky_home: dict[str, str], cloud_python: Path
) -> None:
    api_port, dead_port = free_port(), free_port()
    env = {
        **sky_home,
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(api_port),  # not 46580: an operator's server may run there
        "CROSSLOGIC_URL": f"http://127.0.0.1:{dead_port}",
    }
    cli = " ".join(CROSSLOGIC)
    # One shell, so both commands reach the same SkyPilot API server (one network namespace).
    script = (
        f"{cli} cluster status --token not-needed-nobody-listens; echo status-exit=$?; "
        f"{cli} cluster down --region nope --yes; echo down-exit=$?"
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            offline(["sh", "-c", script]), env=env, capture_output=True, text=True, timeout=240,
            cwd=spec.REPO_ROOT, stdin=subprocess.DEVNULL,
        )
    finally:
        _stop_api_server(env, api_port, cloud_python)
    elapsed = time.monotonic() - started
    lines = result.stdout.splitlines()
    assert lines[0] == "SkyPilot: 0 cluster(s) named crosslogic-*", result.stdout + result.stderr
    assert lines[1].startswith(f"control plane http://127.0.0.1:{dead_port}: unreachable")
    assert lines[2] == "status-exit=0"  # nothing else: no table when neither side knows a region
    assert lines[3] == "down-exit=1"
    assert "no cluster named crosslogic-nope" in result.stderr
    assert "Traceback" not in result.stderr
    print(f"cluster status + down, starting SkyPilot's local API server: {elapsed:.1f} s")


def test_merge_shows_each_side_and_what_only_one_knows() -> None:
    clusters = [
        {"cluster": "crosslogic-eu-west", "region": "eu-west", "status": "UP", "resources": "1x(gpus=H100:1)",
         "cloud": "AWS", "cloud_region": "eu-west-1"},
        {"cluster": "crosslogic-us-east", "region": "us-east", "status": "INIT", "resources": "", "cloud": "",
         "cloud_region": ""},
        {"cluster": spec.CONTROL_PLANE_CLUSTER, "region": None, "status": "UP", "resources": "1x(cpus=8)",
         "cloud": "GCP", "cloud_region": "us-central1"},
    ]
    # Rows as the admin API answers them (its own response model, serialized as JSON).
    now = datetime.now(UTC)
    eu_west = region_status(
        RegionRecord(name="eu-west", secret_generation=1, operator_drained=False, created_at=now),
        None, live_known=True,
    ).model_copy(update={"state": "active", "reason": "", "last_heartbeat_age_s": 1.5, "models": ["llama"]})
    ap_south = region_status(
        RegionRecord(name="ap-south", secret_generation=1, operator_drained=False, created_at=now,
                     last_heartbeat_at=now - timedelta(seconds=99)),
        None, live_known=True,
    )
    regions = [json.loads(r.model_dump_json()) for r in (eu_west, ap_south)]
    rows = {row["region"]: row for row in merge(clusters, regions)}
    assert list(rows) == ["(control plane)", "ap-south", "eu-west", "us-east"]
    assert rows["eu-west"] == {
        "region": "eu-west", "cluster": "crosslogic-eu-west", "status": "UP", "resources": "1x(gpus=H100:1)",
        "cloud": "AWS/eu-west-1", "state": "active", "heartbeat_age_s": 1.5, "models": ["llama"], "reason": None,
    }
    assert rows["ap-south"]["status"] == "no cluster" and rows["ap-south"]["state"] == "drained"
    assert rows["ap-south"]["reason"] == "no recent heartbeat"
    assert rows["us-east"]["state"] == "not registered"
    # The control plane could not be asked: SkyPilot's view alone, state unknown.
    assert {row["region"]: row.get("state") for row in merge(clusters, None)}["eu-west"] == "?"
