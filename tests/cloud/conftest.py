"""Running SkyPilot's side (crosslogic/cloud/driver.py) in .venv-cloud, with the network cut where
the machine allows it (a network namespace with only loopback), and with a HOME of its own so
nothing of an operator's ~/.sky is read or written."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosslogic.cloud.task_spec import REPO_ROOT

CLOUD_PYTHON = REPO_ROOT / ".venv-cloud" / "bin" / "python"
CROSSLOGIC = [sys.executable, "-m", "crosslogic.cli.main"]


@functools.cache
def can_cut_network() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


def offline(cmd: list[str]) -> list[str]:
    """`cmd` in a fresh network namespace (loopback only) when this machine lets us make one."""
    if not can_cut_network():
        return cmd
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


@pytest.fixture(scope="session")
def cloud_python() -> Path:
    if not CLOUD_PYTHON.exists():
        pytest.fail(f"{CLOUD_PYTHON} is missing: run `make cloud-env` (make test does)")
    return CLOUD_PYTHON


@pytest.fixture
def sky_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose HOME (so ~/.sky, ~/.crosslogic) is a fresh temporary directory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "CROSSLOGIC_"))}
    env.update({"HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("CROSSLOGIC_REGION_SECRET", None)
    yield env
