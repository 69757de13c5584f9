"""The two overrides that keep the local stack's Ray listeners on loopback, each against the real
thing it changes (no Ray cluster started): HAProxy's all-interfaces binds, and the gRPC server of
every Serve replica."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from crosslogic.localstack.haproxy_loopback import REAL_BINARY_ENV, real_haproxy_binary, write_launcher
from crosslogic.localstack.listeners import Listener, listeners
from crosslogic.localstack.ray_cluster import LOOPBACK_PRELOAD, free_port, haproxy_env, ray_env

# What Ray 2.60's template renders for the stats and Prometheus pages, plus the API frontend
# (bound to http_options.host), in the same forms (ray/serve/_private/haproxy_templates.py).
_CONFIG = """global
    stats socket {sock} mode 666 level admin expose-fd listeners
defaults
    mode http
    timeout client 5s
    timeout server 5s
    timeout connect 5s
    errorfile 502 {ray_500}
    errorfile 503 {ray_500}
    errorfile 504 {ray_500}
frontend prometheus
    bind :{metrics}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend http_frontend
    bind 127.0.0.1:{http}
    http-request return status 200 content-type text/plain string ok
listen stats
  bind *:{stats}
  stats enable
  stats uri /stats
listen ipv4_any
  bind 0.0.0.0:{any4}
  stats enable
frontend no_replica
    bind 127.0.0.1:{down}
    default_backend nobody
backend nobody
"""
# What Ray writes as its 502/503/504 page (ray/serve/_private/haproxy.py): a plain-text 500.
_RAY_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error"


def _wait_for_listeners(proc: subprocess.Popen[bytes], count: int) -> list[Listener]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        found = [item for item in listeners([psutil.Process(proc.pid)]) if item.protocol == "tcp"]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"HAProxy did not open {count} listeners")


def test_haproxy_launcher_moves_all_interfaces_binds_to_loopback(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("metrics", "http", "stats", "any4", "down")}
    config = tmp_path / "haproxy.cfg"
    (tmp_path / "500.http").write_bytes(_RAY_500)
    config.write_text(_CONFIG.format(sock=tmp_path / "admin.sock", ray_500=tmp_path / "500.http", **ports))
    launcher = write_launcher(tmp_path / "bin")
    assert os.stat(launcher).st_mode & 0o777 == 0o700
    env = {"PATH": os.environ["PATH"], REAL_BINARY_ENV: real_haproxy_binary()}
    proc = subprocess.Popen([str(launcher), "-db", "-f", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        found = _wait_for_listeners(proc, 5)
        # Every port is still served, now on loopback only; the API frontend kept its address.
        assert {(item.address, item.port) for item in found} == {("127.0.0.1", p) for p in ports.values()}
        # The launcher became HAProxy (Ray's manager signals this pid and checks its command line).
        assert os.path.basename(psutil.Process(proc.pid).exe()) == "haproxy"
        assert str(config) in psutil.Process(proc.pid).cmdline()
        assert os.stat(tmp_path / "admin.sock").st_mode & 0o777 == 0o600
    finally:
        proc.kill()
        proc.wait()
    assert "bind 127.0.0.1:" + str(ports["stats"]) in config.read_text()
    # Ray's template opens the admin socket to every local user; the launcher makes it owner-only.
    assert f"stats socket {tmp_path / 'admin.sock'} mode 600 level admin" in config.read_text()


def _raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_haproxy_answers_no_replica_with_a_retryable_openai_503(tmp_path: Path) -> None:
    """No ingress replica to take the request: instead of Ray's plain-text 500 (a server fault to an
    `openai` client), an OpenAI-shaped 503 that says when to retry."""
    ports = {name: free_port() for name in ("metrics", "http", "stats", "any4", "down")}
    config = tmp_path / "haproxy.cfg"
    (tmp_path / "500.http").write_bytes(_RAY_500)
    config.write_text(_CONFIG.format(sock=tmp_path / "admin.sock", ray_500=tmp_path / "500.http", **ports))
    env = {"PATH": os.environ["PATH"], REAL_BINARY_ENV: real_haproxy_binary()}
    launcher = write_launcher(tmp_path / "bin")
    proc = subprocess.Popen([str(launcher), "-db", "-f", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_for_listeners(proc, 5)
        got, headers, body = _raw_request(
            ports["down"], b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert got == 503 and headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "service_unavailable" and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("address", "wildcard", "loopback"),
    [("0.0.0.0", True, False), ("::", True, False), ("::ffff:0.0.0.0", True, False),
     ("127.0.0.1", False, True), ("::ffff:127.0.0.1", False, True), ("::1", False, True),
     ("10.1.2.3", False, False), ("fe80::1%eth0", False, False)],
)
def test_listener_scope(address: str, wildcard: bool, loopback: bool) -> None:
    item = Listener(1, "p", "tcp", address, 1)
    assert (item.wildcard, item.loopback) == (wildcard, loopback)


def test_haproxy_launcher_refuses_to_run_without_the_real_binary(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path)
    result = subprocess.run([str(launcher), "-v"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert result.returncode != 0 and REAL_BINARY_ENV in result.stderr


def test_haproxy_env_starts_haproxy_through_the_launcher(tmp_path: Path) -> None:
    env = haproxy_env(home=tmp_path)
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(tmp_path / "bin" / "haproxy-loopback")
    assert os.access(env[REAL_BINARY_ENV], os.X_OK)
    # A Unix datagram path, not Ray's UDP syslog target (an unconnected UDP socket on 0.0.0.0).
    assert env["RAY_SERVE_HAPROXY_LOG_TARGET"].startswith(str(tmp_path) + "/")


def test_every_worker_of_the_local_cluster_preloads_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_preload_python_modules", "some.module")
    assert ray_env("c")["RAY_preload_python_modules"] == f"some.module,{LOOPBACK_PRELOAD}"
    monkeypatch.setenv("RAY_preload_python_modules", LOOPBACK_PRELOAD)
    assert ray_env("c")["RAY_preload_python_modules"] == LOOPBACK_PRELOAD


def test_replica_grpc_server_binds_loopback_once_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Serve replica runs: `add_port_to_grpc_server(server, "[::]:0")` (ray/serve/_private/replica.py)."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from ray._common import tls_utils

    # Restored after the test: the module patches Ray's helper for the whole process on import.
    monkeypatch.setattr(tls_utils, "add_port_to_grpc_server", tls_utils.add_port_to_grpc_server)
    server = grpc.server(ThreadPoolExecutor(1))
    try:
        wildcard_port = tls_utils.add_port_to_grpc_server(server, "[::]:0")
        importlib.import_module(LOOPBACK_PRELOAD).install()  # what its import does, again if imported before
        loopback_port = tls_utils.add_port_to_grpc_server(server, "[::]:0")
        server.start()
        mine = {item.port: item for item in listeners([psutil.Process()])}
        assert mine[wildcard_port].wildcard  # Ray's own behaviour, for contrast
        assert mine[loopback_port].loopback  # 127.0.0.1 (gRPC may show it as ::ffff:127.0.0.1)
    finally:
        server.stop(None)
