"""How the local Ray cluster's HTTP ingress is chosen (no Ray started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosslogic.errors import ConfigError
from crosslogic.localstack.ray_cluster import INGRESS_ENV, haproxy_env, ingress_mode


def test_haproxy_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INGRESS_ENV, raising=False)
    assert ingress_mode() == "haproxy"
    monkeypatch.setenv(INGRESS_ENV, "proxy")
    assert ingress_mode() == "proxy"


def test_unknown_ingress_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INGRESS_ENV, "nginx")
    with pytest.raises(ConfigError, match="haproxy, proxy"):
        ingress_mode()


def test_haproxy_env_turns_on_direct_ingress_with_ports_of_its_own(tmp_path: Path) -> None:
    env = haproxy_env(request_timeout_s=600, home=tmp_path)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Streams may run as long as the request timeout: a reload must not cut them sooner.
    assert env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "600"
    side_ports = [env[k] for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                   "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")]
    # Not Ray's fixed defaults (8404, 9101, 8500, 9500): two local clusters on one machine coexist.
    assert not {"8404", "9101", "8500", "9500"} & set(side_ports)
    assert len(set(side_ports)) == 4


def test_a_renamed_process_is_still_found_by_its_tag() -> None:
    """Ray's agents rename themselves (setproctitle), zeroing the start of their environment block:
    psutil then reads {} and such processes survived every stop. The raw scan still finds them."""
    import subprocess
    import sys
    import uuid

    import psutil

    from crosslogic.localstack.ray_cluster import _CLUSTER_TAG, _carries_tag

    cluster_id = uuid.uuid4().hex
    # Zero the first variable of our own environment block in place, as a long process title does.
    script = (
        "import ctypes, time\n"
        "env_start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[47])\n"  # field 50
        "ctypes.memset(env_start, 0, 80)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    env = {"A_FIRST_VARIABLE": "x" * 64, _CLUSTER_TAG: cluster_id, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        target = psutil.Process(proc.pid)
        assert target.environ() == {}  # what psutil sees: nothing
        assert _carries_tag(target, cluster_id)
        assert not _carries_tag(target, uuid.uuid4().hex)
    finally:
        proc.kill()
        proc.wait()


def test_a_child_that_lost_its_tag_is_found_through_its_parent() -> None:
    """Ray's agents may lose the tag entirely (their environment comes in hash order, its start
    zeroed by the new title): they are the raylet's children, and found as such."""
    import subprocess
    import sys
    import uuid

    from crosslogic.localstack.ray_cluster import _CLUSTER_TAG, cluster_processes

    cluster_id = uuid.uuid4().hex
    # The parent carries the tag; the child it starts gets an environment without it.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], env={})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={_CLUSTER_TAG: cluster_id, "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert {p.pid for p in cluster_processes(cluster_id)} == {parent.pid, child_pid}
    finally:
        for proc in cluster_processes(cluster_id):
            proc.kill()
        parent.wait()
