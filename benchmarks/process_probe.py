"""Where the cores go while a benchmark runs: CPU seconds per process group, and py-spy profiles.

Used by `serving_overhead.py`. A target's processes are those started under the tag LocalRayCluster
puts in the environment of everything it starts (the bare vLLM server gets the same tag), and their
descendants: vLLM and Ray retitle their processes (`VLLM::EngineCore`, `ray::ServeReplica:...`) by
writing over the memory /proc/<pid>/environ is read from, so those no longer show the tag themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

# The process env var LocalRayCluster tags its processes with.
TAG = "CROSSLOGIC_LOCAL_CLUSTER_ID"
PY_SPY = str(Path(sys.executable).parent / "py-spy")
CLIENT = "benchmark client"
OUTSIDE = "outside (other processes)"


def _tagged(proc: psutil.Process, tags: set[str]) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.environ().get(TAG) in tags
    return False


def group_name(proc: psutil.Process) -> str:
    argv = proc.cmdline() or [proc.name()]
    if "vllm.entrypoints.openai.api_server" in argv:
        return "vllm api_server"
    title = argv[0].split(" ")[0]
    if title.startswith("ray::"):  # `ray::Actor.method_running_now`: the actor is the group
        return title[len("ray::"):].split(".")[0]
    # Other Python processes are named by the script they run.
    if "python" in os.path.basename(title) and len(argv) > 1:
        title = next((a for a in argv[1:] if not a.startswith("-")), title)
    return os.path.basename(title)[:60]


def find_processes(tags: set[str]) -> dict[int, tuple[str, psutil.Process]]:
    """pid -> (group, process) for every process of the tagged targets, plus this one."""
    procs = {p.pid: p for p in psutil.process_iter()}
    roots = {pid for pid, p in procs.items() if _tagged(p, tags)}
    found: dict[int, tuple[str, psutil.Process]] = {}
    for pid, proc in procs.items():
        try:
            if pid == os.getpid():
                found[pid] = (CLIENT, proc)
            elif pid in roots or any(a.pid in roots for a in proc.parents()):
                found[pid] = (group_name(proc), proc)
        except psutil.Error:
            continue
    return found


def _busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


class CpuAccount:
    """CPU seconds per process group between construction and `used()`.

    `outside` is what the rest of the machine used meanwhile (other engineers' jobs): a level with
    a large `outside` share was measured on a machine that was not ours alone.
    """

    def __init__(self, tags: set[str]) -> None:
        self._tags = tags
        self._busy = _busy_s()
        self._start = self._snapshot()

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        snap: dict[int, tuple[str, float]] = {}
        for pid, (group, proc) in find_processes(self._tags).items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                snap[pid] = (group, times.user + times.system)
        return snap

    def used(self) -> dict[str, float]:
        end = self._snapshot()
        busy = _busy_s() - self._busy
        groups: Counter[str] = Counter()
        for pid, (group, cpu) in end.items():
            groups[group] += cpu - self._start.get(pid, (group, 0.0))[1]
        ours = sum(groups.values())
        groups[OUTSIDE] = max(0.0, busy - ours)
        return {g: round(s, 2) for g, s in groups.most_common() if s >= 0.05}


class Profiler:
    """py-spy `record` (raw collapsed stacks, idle excluded) on some processes until `stop()`."""

    def __init__(self, pids: dict[str, int], outdir: Path, rate: int = 100) -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        self._files = {name: outdir / f"{name}.collapsed.txt" for name in pids}
        self._procs = {
            name: subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking", "--full-filenames",
                 "-o", str(self._files[name])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }

    def stop(self, top: int = 15) -> dict[str, dict[str, object]]:
        """Stop recording; per process, samples and the functions with the most self samples."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        summary: dict[str, dict[str, object]] = {}
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            summary[name] = summarize_collapsed(self._files[name], top)
        return summary


def _package(frame: str) -> str:
    """`func (/…/site-packages/ray/serve/x.py:12)` -> `ray.serve`; stdlib -> `stdlib.asyncio`."""
    path = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    for marker, prefix in (("site-packages/", ""), ("/lib/python3.", "stdlib.")):
        if marker in path:
            parts = path.split(marker, 1)[1].split("/")
            parts = parts[1:] if prefix else parts  # drop the `11/` of `python3.11/`
            return prefix + ".".join(p.removesuffix(".py") for p in parts[:2 if not prefix and len(parts) > 2 else 1])
    return "/".join(path.split("/")[-2:]) or frame


def summarize_collapsed(path: Path, top: int) -> dict[str, object]:
    if not path.exists():
        return {"samples": 0, "file": str(path)}
    self_frames: Counter[str] = Counter()
    self_packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.split(";")[-1]
        self_frames[leaf] += int(count)
        self_packages[_package(leaf)] += int(count)

    def shares(counter: Counter[str]) -> list[dict[str, object]]:
        return [{"what": k, "share": round(c / total, 3)} for k, c in counter.most_common(top)] if total else []

    return {"samples": total, "self_by_package": shares(self_packages), "self_by_frame": shares(self_frames),
            "file": str(path)}
