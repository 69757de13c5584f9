"""Keep a local cluster's own processes off the cores a CPU engine computes on.

vLLM's CPU worker binds its OpenMP threads to some cores ("auto" on a 2-core machine: core 0, leaving
core 1 to the engine's scheduler process, which polls). Ray's and Serve's processes float over every
core, so each millisecond they run on the worker's core is a millisecond the model does not compute:
on 2 cores that is most of CrossLogic's throughput gap to bare vLLM. Moving every other thread of
the cluster to the remaining cores gives the worker its core(s) back.

It has to happen after the engines started: an affinity set at `ray start` is inherited by the
engine's worker too, and its OpenMP runtime refuses places outside it ("Invalid value for
environment variable OMP_PLACES"). Threads created later inherit their creator's mask, so a replica
that is replaced keeps the placement of the raylet that forks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psutil

# The process title vLLM's CPU worker gives itself.
_WORKER_TITLE = "VLLM::Worker"


@dataclass
class Placement:
    engine_cpus: set[int] = field(default_factory=set)
    other_cpus: set[int] = field(default_factory=set)
    threads_moved: int = 0

    def summary(self) -> str:
        if not self.threads_moved:
            return "CPU placement: unchanged (no engine worker bound to a subset of the cores)"
        return (f"CPU placement: engine workers on cores {sorted(self.engine_cpus)}, "
                f"{self.threads_moved} other threads of the cluster on {sorted(self.other_cpus)}")


def _is_engine_worker(proc: psutil.Process) -> bool:
    try:
        argv = proc.cmdline() or [proc.name()]
    except psutil.Error:  # ended meanwhile
        return False
    return argv[0].startswith(_WORKER_TITLE)


def keep_off_engine_cores(cluster_processes: list[psutil.Process]) -> Placement:
    """Move every thread of `cluster_processes` but the engine workers' off the workers' cores."""
    placement = Placement()
    all_cpus = set(os.sched_getaffinity(0)) | {c for p in cluster_processes for c in _affinity(p.pid)}
    workers = [p for p in cluster_processes if _is_engine_worker(p)]
    for worker in workers:
        mask = _affinity(worker.pid)
        if mask and mask != all_cpus:
            placement.engine_cpus |= mask
    placement.other_cpus = all_cpus - placement.engine_cpus
    if not placement.engine_cpus or not placement.other_cpus:
        return Placement()
    for proc in cluster_processes:
        if proc in workers:
            continue
        for tid in _threads(proc.pid):
            try:
                os.sched_setaffinity(tid, placement.other_cpus)
                placement.threads_moved += 1
            except OSError:
                continue  # ended meanwhile
    return placement


def _affinity(pid: int) -> set[int]:
    try:
        return set(os.sched_getaffinity(pid))
    except OSError:
        return set()


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def allow_all_cores() -> None:
    """Let this process (every thread) and what it starts run on every core of the machine.

    For an engine replica: a raylet that `keep_off_engine_cores` moved forks new replicas with its
    mask, and vLLM's CPU worker binds only among the cores it is allowed (a replacement engine would
    otherwise compute on the cores left to Ray). Only widens: cores outside the cgroup stay refused.
    """
    cpus = set(range(os.cpu_count() or 1))
    for tid in _threads(os.getpid()) or [0]:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue
