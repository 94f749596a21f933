"""Which tracks arrived since the last training, read from the raw files (no Dagster).

The new-tracks sensor and the nightly schedule ask here. "Trainable" tracks have a
row in tracks.csv and an MP3 in FMA's layout; the experiment uses the first
``CLAP_MAX_TRACKS`` of them by id, exactly as the assets select them
(``clap_pipeline.selection``). The last training's selection is read from the
manifest that every successful training writes (``reports/training.json``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clap_pipeline.dataset import audio_name_id, folder_of
from clap_pipeline.metadata.fma import file_sha256, read_track_ids
from clap_pipeline.selection import Selection
from clap_pipeline.training_report import TrainingReport, TrainingReportError

_FOLDER = re.compile(r"\d{3}")
_LISTED_IDS = 10


def audio_track_ids(audio_dir: str | Path) -> set[int]:
    """Ids of the clips under ``audio_dir/NNN/NNNNNN.mp3`` (one listing per folder)."""
    audio_dir = Path(audio_dir)
    ids: set[int] = set()
    for folder in os.scandir(audio_dir):
        if not (folder.is_dir() and _FOLDER.fullmatch(folder.name)):
            continue
        for name in os.listdir(folder.path):
            track_id = audio_name_id(folder.name, name)
            if track_id is not None:
                ids.add(track_id)
    return ids


@dataclass(frozen=True)
class CsvHash:
    """sha256 of tracks.csv, kept with the size and mtime it was computed for."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path, cached: CsvHash | None = None) -> CsvHash:
        """Reuse ``cached`` while the file's size and mtime are unchanged, else hash it."""
        st = path.stat()
        if cached and (cached.size, cached.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return cached
        return cls(st.st_size, st.st_mtime_ns, file_sha256(path))

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> CsvHash | None:
        try:
            return cls(int(data["size"]), int(data["mtime_ns"]), str(data["sha256"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class RawInputs:
    """The selection the assets would make from the raw files right now."""

    selection: Selection
    available: int  # tracks with metadata and audio, before the CLAP_MAX_TRACKS cap
    max_tracks: int

    @property
    def folders(self) -> list[str]:
        return sorted({folder_of(i) for i in self.selection.track_ids})


def raw_inputs(
    tracks_csv: Path, audio_dir: Path, max_tracks: int, csv_hash: CsvHash | None = None
) -> RawInputs:
    """Read track ids from tracks.csv and the audio folders; select like the assets do."""
    csv_hash = csv_hash or CsvHash.of(tracks_csv)
    on_disk = audio_track_ids(audio_dir)
    trainable = [i for i in read_track_ids(tracks_csv) if i in on_disk]  # sorted by id
    return RawInputs(
        selection=Selection.of(trainable[:max_tracks], csv_hash.sha256),
        available=len(trainable),
        max_tracks=max_tracks,
    )


@dataclass(frozen=True)
class TrainedSelection:
    """What the last successful training was trained on (from its manifest)."""

    data_version: str | None
    track_ids: frozenset[int]
    mlflow_run_id: str | None


def last_training(manifest_path: Path) -> TrainedSelection | None:
    """The selection recorded by the latest training; None when nothing was trained yet."""
    try:
        report = TrainingReport.read(manifest_path)
    except FileNotFoundError:
        return None
    except (OSError, TrainingReportError) as exc:
        raise ValueError(f"{manifest_path} is not a readable training manifest: {exc}") from exc
    if report.selection is not None:
        return TrainedSelection(
            data_version=report.selection.data_version,
            track_ids=frozenset(report.selection.track_ids),
            mlflow_run_id=report.mlflow_run_id,
        )
    # Manifests written before the selection was recorded: the split members.
    return TrainedSelection(None, report.all_split_ids(), report.mlflow_run_id)


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    data_version: str
    new_track_ids: tuple[int, ...] = ()
    removed_track_ids: tuple[int, ...] = ()


def _ids(ids: tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in ids[:_LISTED_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _LISTED_IDS else "")


def decide(
    current: RawInputs, last: TrainedSelection | None, min_new_tracks: int
) -> RetrainDecision:
    """Retrain when at least ``min_new_tracks`` selected tracks were not in the last training."""
    selection = current.selection
    version = selection.data_version
    if not selection.track_ids:
        return RetrainDecision(False, "no track has both a row in tracks.csv and an MP3", version)
    last_ids = last.track_ids if last else frozenset()
    new = tuple(i for i in selection.track_ids if i not in last_ids)
    removed = tuple(sorted(last_ids.difference(selection.track_ids)))
    beyond_cap = current.available - current.max_tracks
    cap_note = (
        f"; {beyond_cap} more tracks have metadata and audio: raise "
        f"CLAP_MAX_TRACKS={current.max_tracks} to train on them"
        if beyond_cap > 0
        else ""
    )
    if last is not None and last.data_version == version:
        return RetrainDecision(
            False,
            f"data unchanged since the last training (data version {version}, "
            f"{len(selection.track_ids)} tracks){cap_note}",
            version,
        )
    if not new:
        if beyond_cap > 0:
            reason = f"no new track among the first CLAP_MAX_TRACKS tracks{cap_note}"
        else:
            reason = "no new tracks since the last training"
            if removed:
                reason += f" ({len(removed)} removed: {_ids(removed)})"
        return RetrainDecision(False, reason, version, new, removed)
    if len(new) < min_new_tracks:
        return RetrainDecision(
            False,
            f"{len(new)} new track(s) ({_ids(new)}); waiting for "
            f"CLAP_RETRAIN_MIN_NEW_TRACKS={min_new_tracks}",
            version,
            new,
            removed,
        )
    what = "no training yet" if last is None else "new since the last training"
    return RetrainDecision(True, f"{len(new)} tracks {what}: {_ids(new)}", version, new, removed)
