"""A run killed with SIGKILL while it holds a `gpu` pool slot must not block later runs.

Real processes on a real SQLite Dagster instance: ``dagster asset materialize`` is
started, killed (the whole process group, as an OOM kill or reboot would), found dead by
the ``dead_runs`` sensor or ``clap-pipeline run-health check``, and run again.
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
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context

from clap_pipeline.definitions import defs
from clap_pipeline.defs import run_health

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
CLI = str(Path(sys.executable).with_name("clap-pipeline"))
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


def _check(home: Path) -> str:
    """`clap-pipeline run-health check` on the instance in ``home``: what it printed."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    done = subprocess.run(
        [CLI, "run-health", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_asset_records_its_run_worker() -> None:
    """The record is made when a step sets up ``clap_settings``: every asset must ask for it."""
    for assets in defs.assets or []:
        assert "clap_settings" in assets.required_resource_keys, assets.keys  # type: ignore[union-attr]


def test_killed_run_is_failed_by_the_sensor_and_frees_its_slot(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    first = _materialize(home, tmp_path / "first.pid", sleep_s=600)
    _wait_for(tmp_path / "first.pid", first, timeout_s=180)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    with DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == DagsterRunStatus.STARTED  # Dagster was not told
        assert dead.tags[run_health.HOST_TAG] == run_health.this_host()
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.active_run_ids == {dead.run_id} and info.slot_count == 1
        # What the daemon does every 30 s under `make dev`.
        skip = run_health.dead_runs(build_sensor_context(instance=instance))
        assert f"run {dead.run_id} is STARTED but its run worker" in (skip.skip_message or "")
        assert "marked FAILED; freed its slot(s) in pool(s) gpu" in (skip.skip_message or "")
        assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()

    second = _materialize(home, tmp_path / "second.pid", 0, *IN_PROCESS)
    try:
        output, _ = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output
    with DagsterInstance.from_config(str(home)) as instance:
        statuses = sorted(r.status.value for r in instance.get_runs())
        assert statuses == ["FAILURE", "SUCCESS"]
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    proc = _materialize(home, tmp_path / "live.pid", sleep_s=600)
    try:
        _wait_for(tmp_path / "live.pid", proc, timeout_s=180)
        with DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            # The step runs in a process of its own; the run worker is the CLI process.
            assert run.tags[run_health.PID_TAG] == str(proc.pid)
            assert run_health.find_dead_run(instance, run) is None
            skip = run_health.dead_runs(build_sensor_context(instance=instance))
            assert skip.skip_message == "no dead run"
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
            # A run of another host is never judged from here, alive or not.
            other = run.with_tags({**run.tags, run_health.HOST_TAG: "elsewhere"})
            assert run_health.find_dead_run(instance, other) is None
            assert "is held by run(s) " + run.run_id in run_health.slot_holders_text(
                instance, "gpu"
            )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_waiting_run_gets_the_slot_once_its_killed_holder_is_found(tmp_path: Path) -> None:
    home = _instance_home(tmp_path)
    holder = _materialize(home, tmp_path / "holder.pid", sleep_s=600)
    _wait_for(tmp_path / "holder.pid", holder, timeout_s=180)
    waiter = _materialize(home, tmp_path / "waiter.pid", sleep_s=0)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 180
            while not instance.event_log_storage.get_concurrency_info("gpu").pending_run_ids:
                assert waiter.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            (held,) = instance.event_log_storage.get_concurrency_info("gpu").active_run_ids
        assert not (tmp_path / "waiter.pid").exists()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        checked = _check(home)
        assert f"run {held} is STARTED but its run worker" in checked, checked
        assert "pool gpu" in checked
        output, _ = waiter.communicate(timeout=120)  # Dagster retries a claim within 15 s
        assert waiter.returncode == 0, output
    finally:
        for proc in (holder, waiter):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
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
        with DagsterInstance.from_config(str(home)) as instance:
            (done,) = run_health.free_dead_runs(instance)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    assert f"stopped its orphaned step process(es) (pid {step})" in done
    assert not psutil.pid_exists(step) or psutil.Process(step).status() == psutil.STATUS_ZOMBIE


def test_processes_a_killed_run_launched_are_stopped(tmp_path: Path) -> None:
    """Like torchrun's ranks: their own session, so killing the run's process group misses them."""
    home = _instance_home(tmp_path)
    first = _materialize(home, tmp_path / "first.pid", 600, launch=True)
    _wait_for(tmp_path / "first.pid", first, timeout_s=180)
    launched = psutil.Process(int((tmp_path / "first.launched").read_text()))
    try:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert launched.is_running() and launched.status() != psutil.STATUS_ZOMBIE
        checked = _check(home)
        assert f"orphaned step process(es) (pid {launched.pid})" in checked, checked
        launched.wait(timeout=10)  # stopped (and reaped by init), not still sleeping
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            launched.kill()
