"""The test stack (the same LocalRayCluster `crosslogic local up` runs) listens on loopback only.

Every socket any process of the cluster listens on: Ray's GCS, raylet, object manager, dashboard and
its agents, HAProxy (API, stats, Prometheus), Serve's fallback proxy, each replica's servers, vLLM's
engine processes, the limiter's stream. With Ray's token auth off, one of them on a wildcard address
is reachable, unauthenticated, by anyone on the network.
"""

from __future__ import annotations

from crosslogic.localstack.listeners import table
from tests.serve.conftest import ServeStack


def test_no_listener_of_the_stack_leaves_loopback(serve_stack: ServeStack) -> None:
    found = serve_stack.cluster.listeners()  # every socket of every process of the cluster
    print("\n" + table(found))
    # What the check covers, so a process the scan misses cannot pass it unseen (Ray's agents can
    # lose the cluster's tag: see `cluster_processes`).
    expected = {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "haproxy", "ray::ProxyActor",
                "ray::ServeReplica:crosslogic:ingress", "ray::ServeReplica:crosslogic:engine-smollm2-135m", "VLLM::Worker"}
    assert expected <= {item.process for item in found}, table(found)
    cluster = serve_stack.cluster
    assert {cluster.gcs_port, cluster.dashboard_port} <= {item.port for item in found}, table(found)
    assert len({item.port for item in found if item.process == "haproxy"}) == 3  # API, stats, Prometheus
    open_doors = [item for item in found if not item.loopback]
    assert not open_doors, "listening beyond loopback:\n" + table(open_doors)
