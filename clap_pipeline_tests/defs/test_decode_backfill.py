"""A backfill of `waveforms` folders: one queued run per folder, launched under the run queue's limits.

The instance is the project's own (`.dagster/dagster.yaml`, as `make dev` uses it); the
backfill of the `decode_waveforms` job is submitted by the `dagster` CLI, the asset
backfill through Dagster's GraphQL API (the mutation the UI's *Materialize all
partitions* sends, by `dagster-graphql`); the runs are planned and dequeued by Dagster's own daemon (`dagster-daemon run`)
and run in run worker processes. The code location holds the project's asset, checks and
job without the torch modules (decode_defs.py), which would take most of the test's time
to import in every process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    QueuedRunCoordinator,
)

from clap_pipeline.defs.audio import waveforms
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline_tests.audio_fixtures import AudioFactory, make_tracks_db

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAGSTER = str(BIN / "dagster")
MODULE = "clap_pipeline_tests.defs.decode_defs"  # the project's asset and job, no torch
BACKFILL_RUNS_AT_ONCE = 2  # .dagster/dagster.yaml: tag_concurrency_limits of dagster/backfill
LIBRARY = {2: "cbr128", 3: "mono", 1000: "vbr", 1001: "empty", 2000: "cbr256"}
FOLDERS = ["000", "001", "002"]
IN_PROGRESS = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


def _project_instance(home: Path, paused: bool = False) -> DagsterInstance:
    """The project's instance in ``home``; ``paused``: its run queue launches nothing."""
    home.mkdir(parents=True, exist_ok=True)
    text = (REPO / ".dagster" / "dagster.yaml").read_text()
    if paused:  # Dagster's documented way: max_concurrent_runs 0 launches no run
        text = text.replace("max_concurrent_runs: 4", "max_concurrent_runs: 0")
        assert "max_concurrent_runs: 0" in text
    (home / "dagster.yaml").write_text(text)
    return DagsterInstance.from_config(str(home))


@contextlib.contextmanager
def _started(*command: str) -> Iterator[subprocess.Popen]:
    """A Dagster service process of the test (own process group), stopped at the end."""
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
        # Dagster's own launcher and run monitoring (frees the slots of ended runs).
        assert type(instance.run_launcher) is DefaultRunLauncher
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
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

    daemon = _started(str(BIN / "dagster-daemon"), "run", "-m", MODULE)  # dequeues the runs
    with daemon, DagsterInstance.from_config(str(home)) as instance:
        deadline = time.monotonic() + 400
        while not all(r.status in FINISHED for r in instance.get_runs()):
            assert time.monotonic() < deadline, [r.status for r in instance.get_runs()]
            time.sleep(0.5)

    with DagsterInstance.from_config(str(home)) as instance:
        records = sorted(instance.get_run_records(), key=lambda r: r.start_time or 0)
        assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
        # Two left the queue at once; the third only after one of them had ended.
        first, second, third = records
        assert third.start_time >= min(first.end_time, second.end_time)
        assert instance.get_materialized_partitions(AssetKey("waveforms")) == set(FOLDERS)
    rows = {folder: pq.read_table(data / "waveforms" / f"{folder}.parquet") for folder in FOLDERS}
    assert {f: sorted(set(t.column("track_id").to_pylist())) for f, t in rows.items()} == {
        "000": [2, 3],
        "001": [1000],  # 1001 is empty: a failure row
        "002": [2000],
    }


QUEUED = DagsterRunStatus.QUEUED
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def test_asset_backfill_of_waveforms_queues_one_run_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill of the asset (the UI's *Materialize all partitions*), planned by the daemon."""
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    with _project_instance(home, paused=True) as instance:  # the runs stay in the queue
        instance.add_dynamic_partitions(audio_folder_partitions.name, FOLDERS)
    params = {"partitionNames": FOLDERS, "assetSelection": [{"path": ["waveforms"]}]}
    answer_file = tmp_path / "answer.json"
    subprocess.run(
        [str(BIN / "dagster-graphql"), "-m", MODULE, "-t", LAUNCH_BACKFILL,
         "-v", json.dumps({"params": params}), "-o", str(answer_file)],
        cwd=REPO, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    answer = json.loads(answer_file.read_text())
    launched = answer["data"]["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", answer
    # Started after the request, the daemon plans it in its first pass (then every 30 s).
    daemon = _started(str(BIN / "dagster-daemon"), "run", "-m", MODULE)
    with daemon, DagsterInstance.from_config(str(home)) as instance:
        deadline = time.monotonic() + 300
        while True:  # the daemon plans the runs and submits them to the run queue
            runs = instance.get_runs()
            if len(runs) == len(FOLDERS) and all(r.status == QUEUED for r in runs):
                break
            assert time.monotonic() < deadline, [r.status for r in runs]
            time.sleep(0.5)
    # One run per folder (a one-folder range each); single_run() would make one run.
    assert sorted(
        (
            r.tags["dagster/asset_partition_range_start"],
            r.tags["dagster/asset_partition_range_end"],
        )
        for r in runs
    ) == [(folder, folder) for folder in FOLDERS]
    assert {r.tags["dagster/backfill"] for r in runs} == {launched["backfillId"]}
