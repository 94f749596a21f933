"""A run killed with SIGKILL while it holds a `gpu` pool slot must not block later runs.

Real processes on a real SQLite Dagster instance: ``dagster asset materialize`` is
started, killed (the whole process group, as an OOM kill or reboot would), and run again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.launcher import WorkerStatus

from clap_pipeline.defs import run_health

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
POOL_DEFS = "clap_pipeline_tests.defs.pool_defs"


def _instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    return home


IN_PROCESS = ["--config-json", '{"execution": {"config": {"in_process": {}}}}']


def _materialize(
    home: Path, marker: Path, sleep_s: float, *extra: str, launch: bool = False
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CLAP_TEST_MARKER": str(marker),
        "CLAP_TEST_SLEEP_S": str(sleep_s),
    }
    if launch:
        env["CLAP_TEST_LAUNCH"] = "1"
    return subprocess.Popen(
        [DAGSTER, "asset", "materialize", "-m", POOL_DEFS, "--select", "pooled", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killed as a whole below
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} not written within {timeout_s} s"
        time.sleep(0.2)


def test_killed_run_frees_its_pool_slot_for_the_next_run(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    first = _materialize(home, tmp_path / "first.pid", sleep_s=600)
    _wait_for(tmp_path / "first.pid", first, timeout_s=180)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    with DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == DagsterRunStatus.STARTED  # Dagster was not told
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.active_run_ids == {dead.run_id} and info.slot_count == 1
        # What the daemon's run monitoring asks (`make dev`): the worker is gone.
        health = instance.run_launcher.check_run_worker_health(dead)
        assert health.status == WorkerStatus.FAILED
        assert dead.run_id in health.msg and "kill -9" in health.msg

    # In-process execution (`make demo`'s run config) goes through the same check.
    second = _materialize(home, tmp_path / "second.pid", 0, *IN_PROCESS)
    try:
        output, _ = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    assert f"run {dead.run_id} is STARTED but its run worker" in output

    with DagsterInstance.from_config(str(home)) as instance:
        runs = {r.run_id: r for r in instance.get_runs()}
        assert runs[dead.run_id].status == DagsterRunStatus.FAILURE
        (rerun,) = [r for r in runs.values() if r.run_id != dead.run_id]
        assert rerun.status == DagsterRunStatus.SUCCESS
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    proc = _materialize(home, tmp_path / "live.pid", sleep_s=600)
    try:
        _wait_for(tmp_path / "live.pid", proc, timeout_s=180)
        with DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert run.tags[run_health.HOST_TAG] == run_health.this_host()
            assert run_health.dead_run_reason(instance, run) is None
            health = instance.run_launcher.check_run_worker_health(run)
            assert health.status == WorkerStatus.RUNNING
            assert run_health.free_stale_runs(instance, ["gpu"]) == []
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
            # A run of another host is never judged from here, alive or not.
            other = run.with_tags({**run.tags, run_health.HOST_TAG: "elsewhere"})
            assert run_health.dead_run_reason(instance, other) is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


WAITING = "whose processes are alive or on another host: waiting"


def _logged(instance: DagsterInstance, text: str) -> bool:
    return any(
        text in (entry.message or "")
        for run in instance.get_runs()
        for entry in instance.all_logs(run.run_id)
    )


def test_a_waiting_run_gets_the_slot_when_its_holder_is_killed(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    holder = _materialize(home, tmp_path / "holder.pid", sleep_s=600)
    _wait_for(tmp_path / "holder.pid", holder, timeout_s=180)
    waiter = _materialize(home, tmp_path / "waiter.pid", sleep_s=0)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 180
            # The waiter's step waits for the holder's slot and has said who holds it (a
            # kill before that line would let its first check free the slot silently).
            while not (
                instance.event_log_storage.get_concurrency_info("gpu").pending_run_ids
                and _logged(instance, WAITING)
            ):
                assert waiter.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert not (tmp_path / "waiter.pid").exists()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        output, _ = waiter.communicate(timeout=120)  # not the 5 minutes of "still blocked"
        assert waiter.returncode == 0, output
    finally:
        for proc in (holder, waiter):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert WAITING in output, output
    with DagsterInstance.from_config(str(home)) as instance:
        assert sorted(r.status.value for r in instance.get_runs()) == ["FAILURE", "SUCCESS"]
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()


def test_a_run_worker_killed_alone_leaves_a_step_process_that_is_stopped(tmp_path: Path) -> None:
    """`kill -9` of the CLI process only: its step process lives on and keeps the slot."""
    home = _instance_home(tmp_path)
    first = _materialize(home, tmp_path / "step.pid", sleep_s=600)
    _wait_for(tmp_path / "step.pid", first, timeout_s=180)
    step = int((tmp_path / "step.pid").read_text())
    os.kill(first.pid, signal.SIGKILL)  # the run worker, not its process group
    first.wait()
    try:
        assert psutil.Process(step).is_running()  # orphaned, still holding the slot
        second = _materialize(home, tmp_path / "second.pid", sleep_s=0)
        output, _ = second.communicate(timeout=300)
        assert second.returncode == 0, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    assert f"stopped its orphaned step process(es) (pid {step})" in output
    assert not psutil.pid_exists(step) or psutil.Process(step).status() == psutil.STATUS_ZOMBIE


def test_processes_a_killed_run_launched_are_stopped_before_the_next_run(tmp_path: Path) -> None:
    """Like torchrun's ranks: their own session, so killing the run's process group misses them."""
    home = _instance_home(tmp_path)
    first = _materialize(home, tmp_path / "first.pid", 600, launch=True)
    _wait_for(tmp_path / "first.pid", first, timeout_s=180)
    launched = psutil.Process(int((tmp_path / "first.launched").read_text()))
    try:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert launched.is_running() and launched.status() != psutil.STATUS_ZOMBIE

        second = _materialize(home, tmp_path / "second.pid", 0)
        output, _ = second.communicate(timeout=300)
        assert second.returncode == 0, output
        assert f"orphaned step process(es) (pid {launched.pid})" in output
        launched.wait(timeout=10)  # stopped (and reaped by init), not still sleeping
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            launched.kill()
