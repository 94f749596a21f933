"""Is a process that some record names (pid, host, start time) still running?

Used to tell work that died without a word (``kill -9``, OOM kill, reboot) from work in
progress: Dagster runs holding a pool slot (``defs/run_health.py``) and MLflow runs left
RUNNING (``tracking.close_abandoned_runs``). A pid alone is not enough, since pids are
reused: the process must also have started no later than it was seen.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

# Process start times and the recorded times are rounded differently.
CLOCK_SLACK_S = 2.0


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    seen_at: float  # a time (epoch seconds) at which the process existed
    host: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """Process ``pid`` of this host, as it runs now."""
        return cls(pid, psutil.Process(pid).create_time(), this_host())

    @classmethod
    def current(cls) -> ProcessRef:
        return cls.of(os.getpid())

    def is_alive(self) -> bool | None:
        """True/False for a process of this host; None when it runs elsewhere (unknowable)."""
        if self.host != this_host():
            return None
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return proc.create_time() <= self.seen_at + CLOCK_SLACK_S
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


def processes_with_env(name: str, value: str) -> list[ProcessRef]:
    """This host's processes whose environment has ``name=value`` (those we may read)."""
    found = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if proc.environ().get(name) == value:
                found.append(ProcessRef(proc.info["pid"], proc.info["create_time"], this_host()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_processes(processes: Sequence[ProcessRef], grace_s: float = 5.0) -> list[int]:
    """SIGTERM the live ones among ``processes`` (this host), SIGKILL after ``grace_s``.

    Returns the pids that were running. Each is checked to still be the recorded process
    (pid and start time) just before it is signalled.
    """
    targets: list[psutil.Process] = []
    for ref in processes:
        if ref.is_alive():
            try:
                proc = psutil.Process(ref.pid)
                proc.terminate()
                targets.append(proc)
            except psutil.NoSuchProcess:
                continue
    _, alive = psutil.wait_procs(targets, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()  # e.g. blocked at exit flushing a queue nobody reads
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return sorted(p.pid for p in targets)


def usable_cpus() -> int:
    """CPUs this process may run on (Linux honours taskset/cgroup affinity), at least 1."""
    affinity = getattr(os, "sched_getaffinity", None)
    return max(1, len(affinity(0)) if affinity else os.cpu_count() or 1)


def exit_with(pid: int, poll_s: float = 1.0) -> None:
    """Make this process exit once process ``pid`` has ended (killed, ``kill -9``).

    For worker pools: a worker blocked on its task queue would otherwise wait forever
    after the process that feeds it died. Call it in the worker (e.g. as the pool's
    ``initializer``); a daemon thread watches ``pid`` (with its start time: pids are reused).
    """
    try:
        watched = psutil.Process(pid)
    except psutil.NoSuchProcess:
        os._exit(1)

    def ended() -> bool:
        try:
            return not watched.is_running() or watched.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def watch() -> None:
        while not ended():
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with", daemon=True).start()


GLIBC_M_MMAP_THRESHOLD = -3  # mallopt() parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 256 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every allocation >= ``threshold`` with its own mmap, so a freed one goes back to the OS.

    glibc raises its mmap threshold (up to 32 MB) whenever a mmapped block is freed; after
    that, clip-sized buffers (a 5-s clip is 0.96 MB) come from the heap, where long-lived
    small allocations between them pin the freed space: embedding 25,000 clips grew the
    process to 2.8 GiB (benchmarks/scale_rehearsal.py), 66 MB per 1,000 clips. With a fixed
    threshold RSS stays flat. False where the C library is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(GLIBC_M_MMAP_THRESHOLD, threshold))
