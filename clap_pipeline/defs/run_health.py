"""Runs that died without telling Dagster (``kill -9``, OOM kill, reboot), on Dagster's public API.

Dagster's own settings do most of the job (``.dagster/dagster.yaml``): the ``gpu`` pool lets
one training step run at a time, and run monitoring fails runs stuck starting and frees
the pool slots of ended runs 30 s after their end. What Dagster cannot see is a local run
worker that was killed: its default run launcher has no health check, so the run stays
STARTED and keeps its slot, and every later step of that pool waits for it forever. For
the runs of this host, this module can:

- record each run's worker (host, pid, start time) in the run's tags, when a step sets up
  its resources (``RunWorkerRecord``, the base of the project's ``ClapSettings``);
- ``free_dead_runs``: mark FAILED each in-progress run of this host whose run worker no
  longer exists, stop the step processes it left behind and free its pool slots. The
  ``dead_runs`` sensor does it every 30 s under the daemon (``make dev``);
  ``clap-pipeline run-health check`` does it by hand (``make demo`` does before it starts).

Runs of other hosts (and runs that recorded no worker) are never judged.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from dataclasses import dataclass

from dagster import (
    ConfigurableResource,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    InitResourceContext,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from clap_pipeline.config import LAUNCHED_BY_RUN_VARIABLE
from clap_pipeline.processes import ProcessRef, processes_with_env, stop_processes, this_host

# The Dagster releases this module was checked on (test_run_health): besides names that
# `dagster` exports it calls instance methods Dagster's own daemon and CLI use
# (report_run_failed, all_logs, add_run_tags, the event log's concurrency slots).
# pyproject.toml pins the same range; test_dagster_api fails when they differ.
CHECKED_DAGSTER_VERSIONS = ">=1.13,<1.14"
HOST_TAG = "clap/worker_host"
PID_TAG = "clap/worker_pid"
PID_START_TAG = "clap/worker_started_at"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Dagster's executors log the pid of each process they start (run worker, step processes).
_PID_EVENTS = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}


def worker_tags() -> dict[str, str]:
    """This process's run worker: itself, or the executor process that started this step."""
    parent = multiprocessing.parent_process()  # set in a multiprocess executor's step process
    worker = ProcessRef.of(parent.pid) if parent and parent.pid else ProcessRef.current()
    return {HOST_TAG: worker.host, PID_TAG: str(worker.pid), PID_START_TAG: f"{worker.seen_at:.3f}"}


class RunWorkerRecord(ConfigurableResource):
    """A resource that records the run worker of the run it is set up in (see the module doc)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.dagster_run
        if context.instance is not None and run is not None and HOST_TAG not in run.tags:
            context.instance.add_run_tags(run.run_id, worker_tags())


def _step_processes(instance: DagsterInstance, run: DagsterRun, host: str) -> list[ProcessRef]:
    found = []
    for entry in instance.all_logs(run.run_id, of_type=_PID_EVENTS):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        value = getattr(getattr(data, "metadata", {}).get("pid"), "value", None)
        if value is not None and str(value).isdigit():
            found.append(ProcessRef(int(value), entry.timestamp, host))
    return found


@dataclass(frozen=True)
class DeadRun:
    """An in-progress run whose run worker is gone, and its processes still running.

    Step processes outlive a run worker killed alone (``kill -9`` of ``dagster asset
    materialize``): nobody will collect their results, and they may hang at exit. So do
    the processes it launched outside its tree (the torchrun launcher's torchrun and
    ranks, found by ``LAUNCHED_BY_RUN_VARIABLE`` in their environment). They are stopped
    before the slot goes to another run, so that two trainings never share the GPU or a
    resume folder.
    """

    run: DagsterRun
    worker: ProcessRef
    orphans: tuple[ProcessRef, ...]

    def reason(self) -> str:
        return (
            f"run {self.run.run_id} is {self.run.status.value} but its run worker (pid "
            f"{self.worker.pid} on {self.worker.host}) no longer exists: it was killed "
            "(kill -9, OOM kill or reboot)"
        )


def find_dead_run(instance: DagsterInstance, run: DagsterRun) -> DeadRun | None:
    """``run`` when its recorded run worker is gone; None when alive or not ours to judge."""
    host = run.tags.get(HOST_TAG)
    if host != this_host() or PID_TAG not in run.tags:
        return None  # another host's run (we cannot see its processes), or no record
    worker = ProcessRef(int(run.tags[PID_TAG]), float(run.tags[PID_START_TAG]), host)
    if worker.is_alive() is not False:
        return None
    launched = processes_with_env(LAUNCHED_BY_RUN_VARIABLE, run.run_id)
    orphans: dict[int, ProcessRef] = {}
    for p in [*_step_processes(instance, run, host), *launched]:
        if p.pid != worker.pid and p.is_alive():
            orphans.setdefault(p.pid, p)
    return DeadRun(run, worker, tuple(orphans.values()))


def _held_pools(instance: DagsterInstance, run_id: str, pools: Iterable[str]) -> list[str]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    return [p for p in pools if run_id in storage.get_concurrency_info(p).active_run_ids]


def free_dead_runs(instance: DagsterInstance, pools: Iterable[str] = ("gpu",)) -> list[str]:
    """Mark this host's dead runs FAILED, stop their orphans, free their slots; what was done."""
    done = []
    filters = RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: this_host()})
    for run in instance.get_runs(filters=filters):
        dead = find_dead_run(instance, run)
        if dead is None:
            continue
        message = dead.reason()
        stopped = stop_processes(dead.orphans)
        if stopped:
            pids = ", ".join(map(str, stopped))
            message += f"; stopped its orphaned step process(es) (pid {pids})"
        held = _held_pools(instance, run.run_id, pools)
        instance.report_run_failed(run, f"{message}; marked FAILED by clap_pipeline run_health")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        message += "; marked FAILED"
        if held:
            message += f"; freed its slot(s) in pool(s) {', '.join(held)}"
        done.append(message)
    return done


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks FAILED the runs of this host whose run worker was killed; frees their slots.",
)
def dead_runs(context: SensorEvaluationContext) -> SkipReason:
    done = free_dead_runs(context.instance)
    for line in done:
        context.log.warning(line)
    return SkipReason("; ".join(done) or "no dead run")


def slot_holders_text(instance: DagsterInstance, pool: str) -> str:
    """Who holds ``pool``'s slots."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders = sorted(info.active_run_ids)
    if not holders:
        return f"pool {pool}: no run holds a slot"
    return (
        f"pool {pool} ({len(info.claimed_slots)}/{info.slot_count} slots) is held by run(s) "
        f"{', '.join(holders)}. If one of them is dead on another host, "
        "`clap-pipeline run-health free RUN_ID` marks it FAILED and frees its slots"
    )


def free_run(instance: DagsterInstance, run_id: str) -> str:
    """Mark ``run_id`` FAILED (when in progress) and free every pool slot it holds."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"no run {run_id} in the Dagster instance {instance.root_directory}")
    if not run.is_finished:
        instance.report_run_failed(run, f"run {run_id} marked FAILED by hand (run-health free)")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return f"run {run_id}: was {run.status.value}, now FAILED or ended; its pool slots are free"
