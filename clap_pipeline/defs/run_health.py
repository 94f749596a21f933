"""Runs that died without telling Dagster (``kill -9``, OOM kill, reboot) and the pool slots they hold.

A run killed this way stays STARTED in the instance, and the slot it claimed in a
concurrency pool (``gpu``) stays claimed: every later step of that pool would wait for
it forever. Dagster frees slots only of runs that *ended* (run monitoring's
``free_slots_after_run_end_seconds``), and its default run launcher cannot tell that a
local run worker died. This module can, for runs of this host:

- ``guarded_executor`` (the code location's executor) tags each run with its host and
  run worker pid and, before any step claims a slot (and every 10 s while a step waits
  for a pool), marks dead runs FAILED and frees their slots;
- ``LocalRunLauncher`` (``run_launcher`` in ``.dagster/dagster.yaml``) is the default
  launcher plus a worker health check, so the daemon's run monitoring (``make dev``)
  marks such runs FAILED and then frees their slots.

A run is dead when it carries this host's tag and its run worker (pid and start time)
no longer exists; step processes it left behind (they survive a run worker killed
alone, and may hang at exit) are stopped before its slot is freed. Runs of other hosts
or executors are never judged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus, executor
from dagster import multi_or_in_process_executor as dagster_default_executor
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.events import EngineEventData
from dagster._core.executor.base import Executor
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRun, RunsFilter

from clap_pipeline.config import LAUNCHED_BY_RUN_VARIABLE
from clap_pipeline.processes import ProcessRef, processes_with_env, stop_processes, this_host

HOST_TAG = "clap/worker_host"
PID_TAG = "clap/worker_pid"
PID_START_TAG = "clap/worker_started_at"
_IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
_PID_EVENTS = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}


def run_processes(instance: DagsterInstance, run: DagsterRun) -> list[ProcessRef]:
    """The run worker (tags) and every process whose pid the run's events recorded."""
    host = run.tags.get(HOST_TAG, "")
    found: list[ProcessRef] = []
    if PID_TAG in run.tags:
        found.append(ProcessRef(int(run.tags[PID_TAG]), float(run.tags[PID_START_TAG]), host))
    for entry in instance.all_logs(run.run_id, of_type=_PID_EVENTS):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        value = getattr(data, "metadata", {}).get("pid") if data is not None else None
        text = getattr(value, "value", None)
        if text is not None and str(text).isdigit():
            found.append(ProcessRef(int(text), entry.timestamp, host))
    return found


@dataclass(frozen=True)
class DeadRun:
    """An in-progress run whose run worker is gone, and its step processes still running.

    Step processes outlive a run worker killed alone (``kill -9`` of `dagster asset
    materialize`): nobody will ever collect their results or free their slots, and they
    may hang at exit. So do the processes it launched outside its tree (the torchrun
    launcher's torchrun and ranks, found by ``LAUNCHED_BY_RUN_VARIABLE`` in their
    environment). They are stopped before the slot goes to another run, so that two
    trainings never share the GPU or a resume folder.
    """

    reason: str
    orphans: tuple[ProcessRef, ...]

    def stop_orphans(self) -> str:
        """Stop the orphaned step processes; the words to add to the reason."""
        stopped = stop_processes(self.orphans)
        if not stopped:
            return ""
        return f"; stopped its orphaned step process(es) (pid {', '.join(map(str, stopped))})"


def find_dead_run(instance: DagsterInstance, run: DagsterRun) -> DeadRun | None:
    """``run`` (in progress) when it is dead; None when it may be alive or is not ours to judge.

    Dead: its run worker (tagged by ``guarded_executor``) no longer exists; for a run without
    that tag, none of the processes its events recorded exists.
    """
    if run.tags.get(HOST_TAG) != this_host():
        return None  # another host's or another executor's run: we cannot see its processes
    processes = run_processes(instance, run)
    if not processes:
        return None
    if PID_TAG in run.tags:
        worker = processes[0]
        if worker.is_alive() is not False:
            return None
        seen: dict[int, ProcessRef] = {}
        launched = processes_with_env(LAUNCHED_BY_RUN_VARIABLE, run.run_id)
        for p in [*processes[1:], *launched]:
            if p.pid != worker.pid and p.is_alive():
                seen.setdefault(p.pid, p)
        what = f"its run worker (pid {worker.pid} on {worker.host}) no longer exists"
        return DeadRun(
            f"run {run.run_id} is {run.status.value} but {what}: it was killed (kill -9, "
            "OOM kill or reboot)",
            tuple(seen.values()),
        )
    if any(p.is_alive() is not False for p in processes):
        return None
    pids = ", ".join(str(p) for p in sorted({p.pid for p in processes}))
    return DeadRun(
        f"run {run.run_id} is {run.status.value} but none of its processes (pid {pids} on "
        f"{this_host()}) exists any more: it was killed (kill -9, OOM kill or reboot)",
        (),
    )


def dead_run_reason(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """Why ``run`` is dead (see :func:`find_dead_run`), or None."""
    dead = find_dead_run(instance, run)
    return dead.reason if dead else None


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    status: str  # status before this module touched it
    reason: str
    freed_pools: tuple[str, ...]

    def message(self) -> str:
        freed = (
            f"; freed its slot(s) in pool(s) {', '.join(self.freed_pools)}"
            if self.freed_pools
            else ""
        )
        return f"{self.reason}; marked FAILED{freed}"


def free_stale_runs(
    instance: DagsterInstance, pools: Iterable[str], *, own_run_id: str | None = None
) -> list[StaleRun]:
    """Mark dead in-progress runs FAILED; free slots in ``pools`` held by dead or ended runs."""
    pools = sorted(set(pools))
    holders: dict[str, set[str]] = {}
    if pools and instance.event_log_storage.supports_global_concurrency_limits:
        for pool in pools:
            info = instance.event_log_storage.get_concurrency_info(pool)
            for run_id in info.active_run_ids:
                holders.setdefault(run_id, set()).add(pool)
    candidates = {r.run_id: r for r in instance.get_runs(filters=RunsFilter(statuses=_IN_PROGRESS))}
    for run_id in holders:
        if run_id not in candidates:
            run = instance.get_run_by_id(run_id)
            if run is not None:
                candidates[run_id] = run
    stale: list[StaleRun] = []
    for run_id, run in sorted(candidates.items()):
        if run_id == own_run_id:
            continue
        if run.status in FINISHED_STATUSES:
            reason = f"run {run_id} ended ({run.status.value}) but still held a pool slot"
        else:
            dead = find_dead_run(instance, run)
            if dead is None:
                continue
            reason = dead.reason + dead.stop_orphans()
            instance.report_run_failed(run, f"{reason}; marked FAILED by a later run's check")
        freed = tuple(sorted(holders.get(run_id, ())))
        if freed:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        stale.append(StaleRun(run_id, run.status.value, reason, freed))
    return stale


def slot_holders_text(instance: DagsterInstance, pool: str, own_run_id: str) -> str:
    """Who holds ``pool`` (for the log line of a blocked step)."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    others = sorted(info.active_run_ids - {own_run_id})
    if not others:
        return f"pool {pool}: no other run holds a slot"
    return (
        f"pool {pool} ({len(info.claimed_slots)}/{info.slot_count} slots) is held by run(s) "
        f"{', '.join(others)}, whose processes are alive or on another host: waiting. If one "
        "of them is dead, `clap-pipeline run-health free RUN_ID` marks it "
        "FAILED and frees its slots"
    )


# --------------------------------------------------------------------------- executor


def _step_pools(execution_plan) -> list[str]:
    return sorted(
        {
            step.pool
            for step in execution_plan.get_steps_to_execute_in_topo_order()
            if getattr(step, "pool", None)
        }
    )


def _is_blocked_event(event: DagsterEvent) -> bool:
    return event.event_type == DagsterEventType.ENGINE_EVENT and "blocked by limit for pool" in (
        event.message or ""
    )


class StaleSlotGuardExecutor(Executor):
    """Dagster's executor, preceded (and, when a step is blocked, followed) by the dead-run check."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def get_step_event_or_retry_event(self, *args, **kwargs):
        return self._inner.get_step_event_or_retry_event(*args, **kwargs)

    def execute(self, plan_context, execution_plan) -> Iterator[DagsterEvent]:
        instance: DagsterInstance = plan_context.instance
        run_id = plan_context.dagster_run.run_id
        me = ProcessRef.current()
        instance.add_run_tags(
            run_id, {HOST_TAG: me.host, PID_TAG: str(me.pid), PID_START_TAG: f"{me.seen_at:.3f}"}
        )
        pools = _step_pools(execution_plan)

        def check(log_holders: Sequence[str] = ()) -> Iterator[DagsterEvent]:
            for stale in free_stale_runs(instance, pools, own_run_id=run_id):
                yield DagsterEvent.engine_event(plan_context, stale.message(), EngineEventData())
            for pool in log_holders:
                yield DagsterEvent.engine_event(
                    plan_context, slot_holders_text(instance, pool, run_id), EngineEventData()
                )

        yield from check()
        watcher = _BlockedRunWatcher(instance, run_id, pools)
        try:
            for event in self._inner.execute(plan_context, execution_plan):
                yield event
                if _is_blocked_event(event):
                    pool = getattr(event.event_specific_data, "metadata", {}).get("pool")
                    yield from check([str(getattr(pool, "value", pool))] if pool else [])
                    watcher.start()
        finally:
            watcher.stop()


class _BlockedRunWatcher:
    """While a step waits for a pool, checks the holders again every ``interval_s``.

    The executor yields nothing while it waits (Dagster repeats "still blocked" only every
    5 minutes), so a holder that dies meanwhile is noticed by this thread, which uses its
    own instance object and reports what it freed as engine events of the waiting run.
    """

    def __init__(
        self, instance: DagsterInstance, run_id: str, pools: Sequence[str], interval_s: float = 10.0
    ) -> None:
        self._ref = instance.get_ref()
        self._run_id = run_id
        self._pools = list(pools)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self._pools:
            self._thread = threading.Thread(
                target=self._watch, name="stale-slot-watch", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _watch(self) -> None:
        with DagsterInstance.from_ref(self._ref) as instance:
            while not self._stop.wait(self._interval_s):
                try:
                    stale = free_stale_runs(instance, self._pools, own_run_id=self._run_id)
                    run = instance.get_run_by_id(self._run_id) if stale else None
                    for found in stale:
                        if run is not None:
                            instance.report_engine_event(found.message(), run)
                except Exception:  # never let the watch fail the run it serves
                    logging.getLogger(__name__).exception("checking pool slot holders failed")


def _requirements(executor_config) -> list:
    return multiple_process_executor_requirements() if "multiprocess" in executor_config else []


@executor(
    name="multi_or_in_process_executor",
    config_schema=dagster_default_executor.config_schema,
    requirements=_requirements,
)
def guarded_executor(init_context) -> Executor:
    """Dagster's default executor (same config: ``multiprocess`` or ``in_process``) that
    frees the pool slots of dead runs before any step waits for one."""
    inner: Callable = dagster_default_executor.executor_creation_fn  # type: ignore[assignment]
    return StaleSlotGuardExecutor(inner(init_context))


# --------------------------------------------------------------------------- run launcher


class LocalRunLauncher(DefaultRunLauncher):
    """The default run launcher plus a worker health check for the daemon's run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        instance = self._instance
        dead = find_dead_run(instance, run) if instance is not None else None
        if dead is None:
            # Alive, not yet started, or another host's run: monitoring must leave it alone.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "")
        # Monitoring marks it FAILED and then frees its slots: its steps must be gone first.
        return CheckRunHealthResult(WorkerStatus.FAILED, dead.reason + dead.stop_orphans())


# --------------------------------------------------------------------------- command line


def free_run(instance: DagsterInstance, run_id: str) -> str:
    """Mark ``run_id`` FAILED (when in progress) and free every pool slot it holds."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"no run {run_id} in the Dagster instance {instance.root_directory}")
    if run.status not in FINISHED_STATUSES:
        instance.report_run_failed(run, f"run {run_id} marked FAILED by hand (run_health free)")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return f"run {run_id}: was {run.status.value}, now FAILED or ended; its pool slots are free"
