"""The local cluster's threads leave the CPU engine worker's cores (real processes, real affinity)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from crosslogic.localstack.cpu_placement import keep_off_engine_cores

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")

_SLEEPER = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\nprint('ready', flush=True)\ntime.sleep(30)\n"


def _spawn(argv0: str, cpus: set[int] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([argv0, "-c", _SLEEPER], executable=sys.executable, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    if cpus is not None:  # what vLLM's OpenMP binding does to its worker
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)
    return proc


def test_other_threads_leave_the_worker_core() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    worker = _spawn("VLLM::Worker", {cpus[0]})
    other = _spawn("ray::ServeReplica:crosslogic:ingress")
    try:
        placement = keep_off_engine_cores([psutil.Process(worker.pid), psutil.Process(other.pid)])
        assert placement.engine_cpus == {cpus[0]}
        assert placement.threads_moved >= 2  # the main thread and the sleeper thread
        for tid in os.listdir(f"/proc/{other.pid}/task"):
            assert os.sched_getaffinity(int(tid)) == set(cpus[1:])
        assert os.sched_getaffinity(worker.pid) == {cpus[0]}  # the worker keeps its core
    finally:
        for proc in (worker, other):
            proc.kill()
            proc.wait()


def test_nothing_moves_without_a_bound_worker() -> None:
    other = _spawn("ray::ServeReplica:crosslogic:ingress")
    try:
        before = os.sched_getaffinity(other.pid)
        placement = keep_off_engine_cores([psutil.Process(other.pid)])
        assert placement.threads_moved == 0 and "unchanged" in placement.summary()
        assert os.sched_getaffinity(other.pid) == before
    finally:
        other.kill()
        other.wait()


def test_allow_all_cores_undoes_an_inherited_mask() -> None:
    """A replica forked by a moved raylet starts on its cores; an engine widens itself again."""
    cpus = sorted(os.sched_getaffinity(0))
    script = (
        "import os\n"
        "from crosslogic.localstack.cpu_placement import allow_all_cores\n"
        "allow_all_cores()\n"
        "print(sorted(os.sched_getaffinity(0)))\n"
    )
    out = subprocess.run(["taskset", "-c", str(cpus[-1]), sys.executable, "-c", script],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(cpus)
