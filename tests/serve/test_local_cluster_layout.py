"""How the test stack (like `crosslogic local up`) runs: HTTP through HAProxy, Ray off the engine's cores."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import psutil

from crosslogic.localstack.ray_cluster import cluster_processes
from tests.serve.conftest import ServeStack
from tests.serve.conftest import process_title as _title


def test_http_port_is_served_by_haproxy(serve_stack: ServeStack) -> None:
    """Not Serve's ProxyActor: HAProxy of this cluster listens on the API port (direct ingress)."""
    port = urlparse(serve_stack.base_url).port
    listeners = {
        os.path.basename(_title(p)): p
        for p in cluster_processes(serve_stack.cluster.cluster_id)
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert list(listeners) == ["haproxy"], listeners


def test_ray_processes_stay_off_the_engine_workers_cores(serve_stack: ServeStack) -> None:
    procs = cluster_processes(serve_stack.cluster.cluster_id)
    workers = [p for p in procs if _title(p).startswith("VLLM::Worker")]
    assert workers
    engine_cpus = set().union(*(os.sched_getaffinity(w.pid) for w in workers))
    if engine_cpus == set(os.sched_getaffinity(0)):
        return  # the workers use every core (a machine vLLM binds wholly): nothing to keep off
    # Ray's own processes and the ingress replicas (also those Serve replaced since: they inherit
    # the raylet's mask). Engine replicas are left out: they widen their mask on purpose.
    others = [p for p in procs if os.path.basename(_title(p).split(" ")[0]) in {"raylet", "gcs_server", "haproxy"}
              or _title(p).startswith("ray::ServeReplica:crosslogic:ingress")]
    assert len(others) >= 5, [_title(p) for p in others]  # raylet, GCS, HAProxy, 2 ingress replicas
    for proc in others:
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                mask = os.sched_getaffinity(int(tid))
            except OSError:
                continue  # the thread ended meanwhile
            assert not mask & engine_cpus, (_title(proc), tid, mask, engine_cpus)


def test_serving_path_runs_at_normal_priority(serve_stack: ServeStack) -> None:
    """Ray would start its workers at nice 15, below its own daemons; the serving path (HAProxy,
    ingress and engine replicas, vLLM's processes) runs at 0, as bare vLLM does."""
    procs = cluster_processes(serve_stack.cluster.cluster_id)
    serving = [p for p in procs if os.path.basename(_title(p).split(" ")[0]) == "haproxy"
               or _title(p).startswith(("ray::ServeReplica:crosslogic:", "VLLM::"))]
    titles = {_title(p).split(" ")[0] for p in serving}
    assert {"ray::ServeReplica:crosslogic:ingress", "VLLM::Worker", "VLLM::EngineCore"} <= titles, titles
    niceness = {(_title(p).split(" ")[0], p.pid): p.nice() for p in serving}
    assert all(n == 0 for n in niceness.values()), niceness
