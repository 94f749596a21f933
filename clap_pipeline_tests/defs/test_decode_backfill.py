"""A backfill of `waveforms` folders: one queued run per folder, launched under the run queue's limits.

The instance is the project's own (`.dagster/dagster.yaml`, as `make dev` uses it); the
backfill of the `decode_waveforms` job is submitted by the `dagster` CLI; the runs are
dequeued by Dagster's own run-queue daemon (one iteration at a time, so that the limit
can be watched) and run by the project's run launcher in run worker processes. The
code location holds the project's asset, checks and job without the torch modules
(decode_defs.py), which would take most of the test's time to import in every process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    DagsterRunStatus,
    QueuedRunCoordinator,
)
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from clap_pipeline.defs.audio import waveforms
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline_tests.audio_fixtures import AudioFactory, make_tracks_db

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
MODULE = "clap_pipeline_tests.defs.decode_defs"  # the project's asset and job, no torch
BACKFILL_RUNS_AT_ONCE = 2  # .dagster/dagster.yaml: tag_concurrency_limits of dagster/backfill
LIBRARY = {2: "cbr128", 3: "mono", 1000: "vbr", 1001: "empty", 2000: "cbr256"}
FOLDERS = ["000", "001", "002"]
IN_PROGRESS = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


def _project_instance(home: Path) -> DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    return DagsterInstance.from_config(str(home))


def test_make_dev_instance_queues_runs_under_limits(tmp_path: Path) -> None:
    with _project_instance(tmp_path / "home") as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert queue.tag_concurrency_limits == [
            {"key": "dagster/backfill", "limit": BACKFILL_RUNS_AT_ONCE}
        ]
        assert concurrency.pool_config.default_pool_limit == 1  # the gpu pool: one training
        launcher = type(instance.run_launcher)
        assert (launcher.__module__, launcher.__name__) == (
            "clap_pipeline.defs.run_health",
            "LocalRunLauncher",
        )
    assert waveforms.backfill_policy == BackfillPolicy.multi_run(max_partitions_per_run=1)


def test_backfill_of_folders_runs_one_queued_run_per_folder_within_the_limit(
    tmp_path: Path, audio: AudioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    audio.make_library(data / "fma_audio", LIBRARY)
    make_tracks_db(data / "clap.duckdb", LIBRARY)
    home = tmp_path / "home"
    env = {"DAGSTER_HOME": str(home), "CLAP_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():  # also for the code server and run workers started below
        monkeypatch.setenv(key, value)
    with _project_instance(home) as instance:
        instance.add_dynamic_partitions(audio_folder_partitions.name, FOLDERS)

    subprocess.run(
        [DAGSTER, "job", "backfill", "-m", MODULE, "-j", "decode_waveforms",
         "--partitions", ",".join(FOLDERS), "--noprompt"],
        cwd=REPO, env={**os.environ, **env}, check=True, timeout=300, capture_output=True,
    )  # fmt: skip

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert sorted(r.tags["dagster/partition"] for r in runs) == FOLDERS
        assert {r.status for r in runs} == {DagsterRunStatus.QUEUED}
        assert len({r.tags["dagster/backfill"] for r in runs}) == 1

        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        target = ModuleTarget(
            module_name=MODULE, attribute=None, working_directory=str(REPO), location_name=None
        )
        most_at_once, first_dequeue = 0, None
        with WorkspaceProcessContext(instance, target) as context:
            deadline = time.monotonic() + 400
            while True:
                list(daemon.run_iteration(context))
                statuses = [r.status for r in instance.get_runs()]
                if first_dequeue is None:  # what the first pass let out of the queue
                    first_dequeue = sum(s != DagsterRunStatus.QUEUED for s in statuses)
                most_at_once = max(most_at_once, sum(s in IN_PROGRESS for s in statuses))
                if all(s in FINISHED for s in statuses):
                    break
                assert time.monotonic() < deadline, statuses
                time.sleep(0.5)

        runs = instance.get_runs()
        assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
        # The first pass dequeued the limit while the third waited in the queue; sampled
        # every 0.5 s, runs in progress never exceeded it (fast runs need not overlap).
        assert first_dequeue == BACKFILL_RUNS_AT_ONCE, first_dequeue
        assert 1 <= most_at_once <= BACKFILL_RUNS_AT_ONCE
        assert instance.get_materialized_partitions(AssetKey("waveforms")) == set(FOLDERS)
    rows = {folder: pq.read_table(data / "waveforms" / f"{folder}.parquet") for folder in FOLDERS}
    assert {f: sorted(set(t.column("track_id").to_pylist())) for f, t in rows.items()} == {
        "000": [2, 3],
        "001": [1000],  # 1001 is empty: a failure row
        "002": [2000],
    }


def test_asset_backfill_of_waveforms_queues_one_run_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill of the asset (the UI's *Materialize all partitions*), planned by the daemon."""
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    target = ModuleTarget(
        module_name=MODULE, attribute=None, working_directory=str(REPO), location_name=None
    )
    with _project_instance(home) as instance:
        instance.add_dynamic_partitions(audio_folder_partitions.name, FOLDERS)
        with WorkspaceProcessContext(instance, target) as context:
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id="decode",
                asset_graph=context.create_request_context().asset_graph,
                partition_names=FOLDERS,
                asset_selection=[AssetKey("waveforms")],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=None,
                description=None,
                run_config=None,
            )
            instance.add_backfill(backfill)
            list(execute_backfill_iteration(context, logging.getLogger("backfill")))
        runs = instance.get_runs()
        # One run per folder (a one-folder range each); single_run() would make one run.
        assert sorted(
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in runs
        ) == [(folder, folder) for folder in FOLDERS]
        assert {r.status for r in runs} == {DagsterRunStatus.QUEUED}  # for the run queue
        assert {r.tags["dagster/backfill"] for r in runs} == {"decode"}
