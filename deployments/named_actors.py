"""One handle per process for each of the cluster's named, detached actors (router, limiter, billing).

Each getter used to call `Actor.options(name=..., get_if_exists=True).remote()` on every use: a
blocking GCS lookup on the caller's event loop each time and, at start-up, several attempts to
create the same actor at once from one process (the replica's loop, Serve's router thread, the
readiness watcher, the region sync). In CI one replica's calls to the router actor then timed out
for good while other processes' calls worked, although nothing cancelled them any more: resolving
and creating the actor once per process, under a lock, takes that race away. A caller that finds
the actor gone for good (`RayActorError`, e.g. killed by an operator) calls `forget` so the next
use looks it up, or creates it, again.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

_lock = threading.Lock()  # Serve runs handle routing on its own thread: two loops ask at once
# Keyed by the cluster too: a driver that shuts Ray down and connects elsewhere (tests) never gets
# a handle from the previous cluster.
_handles: dict[tuple[str, str, str], Any] = {}


def _key(name: str, namespace: str) -> tuple[str, str, str]:
    return ray.get_runtime_context().gcs_address, namespace, name


def named_actor(actor_class: Any, name: str, namespace: str, *args: Any) -> Any:
    """The handle of the detached actor `namespace/name`, created with `args` if it does not exist."""
    key = _key(name, namespace)
    with _lock:
        handle = _handles.get(key)
        if handle is None:
            handle = actor_class.options(
                name=name, namespace=namespace, lifetime="detached", get_if_exists=True
            ).remote(*args)
            _handles[key] = handle
        return handle


def forget(name: str, namespace: str) -> None:
    """Drop the cached handle: the next `named_actor` resolves the actor again."""
    with _lock:
        _handles.pop(_key(name, namespace), None)
