"""Imported first in every Ray worker of a local (single-machine, loopback-only) cluster.

`crosslogic local up` and the test stack name this module in Ray's `preload_python_modules` system
config (env RAY_preload_python_modules, set at `ray start` like RAY_worker_niceness): the raylet
then starts every Python worker with `--worker-preload-modules`, which imports it before any task
or actor runs. Nothing else imports it: a production cluster never runs this.

What it changes: every Serve replica starts a gRPC server for inter-deployment calls (our ingress
reaches the engines over it with `engine_transport: grpc`) and Ray 2.60 hard-codes its address,
`add_port_to_grpc_server(server, "[::]:0")` in ray/serve/_private/replica.py, with no setting to
change it. Callers dial the replica at `{node_ip}:{port}` (request_router/replica_wrapper.py), and
the local node's IP is 127.0.0.1 (`ray start --node-ip-address=127.0.0.1`), so binding loopback
loses no caller while it closes the port to the network: with Ray's token auth off, as on the local
stack, that server takes unauthenticated calls from anyone who can reach it.

The override wraps Ray's helper rather than copying it, so RAY_USE_TLS and the token-auth
interceptor (attached when the server is created, not here) still apply. Importing
`ray._common.tls_utils` is cheap; `ray.serve` is not imported here, since most workers never need
it (+2 s and ~50 MB each).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ray._common import tls_utils

LOOPBACK = "127.0.0.1"
_ALL_INTERFACES = ("[::]:", "0.0.0.0:")


def loopback_only(add_port: Callable[[Any, str], int]) -> Callable[[Any, str], int]:
    """`add_port` with an all-interfaces address ("[::]:P", "0.0.0.0:P") moved to 127.0.0.1:P."""
    if getattr(add_port, "_crosslogic_loopback", False):
        return add_port

    def add_loopback_port(server: Any, address: str) -> int:
        for prefix in _ALL_INTERFACES:
            if address.startswith(prefix):
                address = f"{LOOPBACK}:{address[len(prefix):]}"
                break
        return add_port(server, address)

    add_loopback_port._crosslogic_loopback = True  # type: ignore[attr-defined]
    return add_loopback_port


def install() -> None:
    """Patch Ray's helper where it is defined and, if already imported, where Serve's replica
    module bound it (`from ray._common.tls_utils import add_port_to_grpc_server`)."""
    tls_utils.add_port_to_grpc_server = loopback_only(tls_utils.add_port_to_grpc_server)
    replica = sys.modules.get("ray.serve._private.replica")
    if replica is not None:
        replica.add_port_to_grpc_server = loopback_only(replica.add_port_to_grpc_server)  # type: ignore[attr-defined]


install()
