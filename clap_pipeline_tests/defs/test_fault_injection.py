"""Fault injection: `waveforms` and `clap_model` killed with SIGKILL, then run again.

Each run is the real `dagster asset materialize` command on a SQLite Dagster instance
configured like `.dagster/dagster.yaml` (pool `gpu` of limit 1), started in its own
process group and killed as a whole (what an OOM kill or a reboot does); the killed run
is then found dead (``run_health.free_dead_runs``, what the ``dead_runs`` sensor and
`clap-pipeline run-health check` do). The rerun must give what an uninterrupted run
gives, and leave no temp file, no RUNNING MLflow run, no STARTED Dagster run and no held
pool slot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from dagster import DagsterInstance

from clap_pipeline import tracking
from clap_pipeline.audio.decode_failures import read_failures
from clap_pipeline.audio.waveforms import DecodeOptions, build_waveforms, group_by_folder
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline.defs.run_health import free_dead_runs
from clap_pipeline.selection import select_tracks
from clap_pipeline.training.config import TrainConfig, TrainInputs
from clap_pipeline.training.loop import train
from clap_pipeline_tests.audio_fixtures import AudioFactory, make_tracks_db
from clap_pipeline_tests.training_fixtures import (
    mlflow_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    write_training_dataset,
)

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
EXPERIMENT = "fault-injection"


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


class Location:
    """A data folder, MLflow store and Dagster instance, and the CLI run against them."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.home = root / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(REPO / ".dagster" / "dagster.yaml", self.home / "dagster.yaml")
        self.store = mlflow_store(root / "mlruns")
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "CLAP_DATA_DIR": str(self.data),
            "CLAP_MODEL": str(model_dir),
            "MLFLOW_TRACKING_URI": self.store,
            "CLAP_MLFLOW_EXPERIMENT": EXPERIMENT,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.logs: list[Path] = []

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.home))

    def start(
        self, *args: str, cli: tuple[str, ...] = ("asset", "materialize")
    ) -> subprocess.Popen:
        log = self.root / f"run-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            return subprocess.Popen(
                [DAGSTER, *cli, "-m", "clap_pipeline.definitions", *args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # killed as a whole below
            )

    def log(self, tail: int = 6000) -> str:
        return self.logs[-1].read_text(errors="replace")[-tail:]

    def kill_when(self, proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 400
        while not ready():
            assert proc.poll() is None, f"finished before {what}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {what} within 400 s:\n{self.log()}"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with self.instance() as instance:  # found dead: marked FAILED, its slot freed
            (found,) = free_dead_runs(instance)
        assert "is STARTED but its run worker" in found, found

    def finish(self, proc: subprocess.Popen) -> str:
        try:
            proc.wait(timeout=500)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0, self.log()
        return self.log(tail=10**7)

    def assert_runs(self, failed: int) -> None:
        with self.instance() as instance:
            statuses = sorted(r.status.value for r in instance.get_runs())
            assert statuses == sorted(["FAILURE"] * failed + ["SUCCESS"])
            assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def test_waveforms_killed_mid_partition_then_rerun_equals_an_uninterrupted_build(
    tmp_path: Path, audio: AudioFactory, tiny_model_dir: Path
) -> None:
    loc = Location(tmp_path / "killed", tiny_model_dir)
    kinds = ["cbr128", "vbr", "mono", "cbr256", "wav"]
    library = {
        tid: kinds[i % len(kinds)] for i, tid in enumerate([*range(2, 32), *range(1000, 1030)])
    }
    library[7] = "empty"  # one failure row
    audio.make_library(loc.data / "fma_audio", library)
    make_tracks_db(loc.data / "clap.duckdb", library)
    with loc.instance() as instance:
        instance.add_dynamic_partitions(audio_folder_partitions.name, ["000", "001"])
    waves = loc.data / "waveforms"
    # One run over both folders (a backfill would make one run per folder).
    both = {
        "dagster/asset_partition_range_start": "000",
        "dagster/asset_partition_range_end": "001",
    }
    config = loc.root / "decode.yaml"  # `job execute` reads config from files (JSON is YAML)
    config.write_text(json.dumps({"ops": {"waveforms": {"config": {"workers": 1}}}}))
    args = ["-j", "decode_waveforms", "--tags", json.dumps(both), "-c", str(config)]
    job = ("job", "execute")

    # Killed while folder 001 is being written, 000 being complete: 000 is kept as is.
    loc.kill_when(
        loc.start(*args, cli=job),
        lambda: (waves / "000.parquet").exists() and bool(list(waves.glob(".001.parquet.*.tmp"))),
        "folder 001 in progress",
    )
    first_000 = (waves / "000.parquet").read_bytes()
    assert _temps(waves)
    assert not (waves / "001.parquet").exists()
    loc.finish(loc.start(*args, cli=job))
    assert (waves / "000.parquet").read_bytes() == first_000  # unchanged: not rewritten

    reference = tmp_path / "reference"
    make_tracks_db(reference / "clap.duckdb", library)
    selected = group_by_folder(
        select_tracks(reference / "clap.duckdb", loc.data / "fma_audio", 500)
    )
    build_waveforms(selected, reference / "waveforms", reference / "clap.duckdb", DecodeOptions())

    def rows(folder: Path):
        table = ds.dataset(folder, format="parquet").to_table()
        return table.sort_by([("track_id", "ascending"), ("start_s", "ascending")])

    assert rows(waves).equals(rows(reference / "waveforms"))
    assert len(set(rows(waves).column("track_id").to_pylist())) == len(library) - 1
    failures = {f.track_id: f.reason for f in read_failures(loc.data / "clap.duckdb")}
    assert failures == {7: "empty"}
    assert _temps(loc.data) == []
    loc.assert_runs(failed=1)


TRAIN = {
    "batch_size": 16,
    "learning_rate": 1e-3,
    "max_epochs": 3,
    "patience": 5,
    "cpu_threads": 1,
    "system_metrics": False,
}


def test_clap_model_killed_in_epoch_1_and_after_epoch_2_then_rerun_finishes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    loc = Location(tmp_path / "killed", tiny_model_dir)
    write_training_dataset(loc.data)
    args = ["--select", "clap_model", "--config-json"]
    args += [json.dumps({"ops": {"clap_model": {"config": TRAIN}}})]
    checkpoints = loc.data / "checkpoints"

    def last_epoch() -> int:
        states = list(checkpoints.glob("*/resume.json"))
        if not states:
            return -1
        try:
            return json.loads(states[0].read_text())["last_epoch"]
        except (OSError, ValueError, KeyError):
            return -1

    # 1. killed during epoch 1 (resume state of epoch 0 written); 2. after epoch 2.
    loc.kill_when(loc.start(*args), lambda: last_epoch() == 0, "the start of epoch 1")
    loc.kill_when(loc.start(*args), lambda: last_epoch() >= 2, "the end of epoch 2")
    client = tracking.client(loc.store)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "RUNNING"  # nothing could end it
    with loc.instance() as instance:  # both killed Dagster runs found dead, the slot free
        assert [r.status.value for r in instance.get_runs()] == ["FAILURE", "FAILURE"]
        assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == set()
    output = loc.finish(loc.start(*args))
    assert "resuming MLflow run" in output

    manifest = json.loads((loc.data / "reports" / "training.json").read_text())
    assert [row["epoch"] for row in manifest["epochs"]] == [1, 2, 3]
    runs = client.search_runs([experiment])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed.info.run_id, "FINISHED")]
    assert len(runs[0].data.tags["dagster_run_ids"].split(",")) == 3
    assert _temps(loc.data) == []
    assert list(checkpoints.glob("*/*.pt")) == []  # resume tensors dropped when done
    loc.assert_runs(failed=2)

    # The same numbers as a run that was never interrupted (same data, config, seed, CPU).
    data = loc.data
    reference = train(
        TrainConfig(**TRAIN),
        TrainInputs(
            model_source=str(tiny_model_dir),
            prompts_path=data / "prompts.parquet",
            waveforms_dir=data / "waveforms",
            duckdb_path=data / "clap.duckdb",
            checkpoints_dir=tmp_path / "reference" / "checkpoints",
            manifest_path=tmp_path / "reference" / "training.json",
            tracking_uri=mlflow_store(tmp_path / "reference" / "mlruns"),
            experiment=EXPERIMENT,
        ),
    )
    for row, record in zip(manifest["epochs"], reference.epochs, strict=True):
        assert row["val_loss"] == pytest.approx(record.val_loss, rel=1e-6)
        assert row["train_loss"] == pytest.approx(record.train_loss, rel=1e-6)
        assert row["val_text_to_audio_recall_at_5"] == record.val_recall_at_5
