"""``reports/training.json``: what a successful training leaves behind, as one typed record.

Training writes it (``training/report.py``); the evaluation, the new-tracks sensor, the
feedback evaluation and the launchers read it through ``TrainingReport`` fields, never by
string keys. It lives on the floor because readers below training in the import order
(``metadata/new_tracks.py``) need it too.

The JSON keys are the contract (``CONTRACT_KEYS``) plus extras for reports and the
comparison. Reports written by older versions, or by tests, may lack the extras: they
read as their defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clap_pipeline.run_names import VAL_PREFIX, val_metric
from clap_pipeline.storage import write_text_atomic

# What every reader may rely on; the rest defaults when absent.
CONTRACT_KEYS = ("mlflow_run_id", "model_source", "best_epoch", "best_checkpoint", "splits")


class TrainingReportError(ValueError):
    """``training.json`` breaks its contract; the message names the file and the key."""


@dataclass(frozen=True)
class EpochRow:
    """One epoch of the run: losses, validation metrics (keys without the ``val_`` prefix
    they have in the JSON, as in MLflow: ``run_names.val_metric``)."""

    epoch: int
    checkpoint: str | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "checkpoint": self.checkpoint,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            **{val_metric(k): v for k, v in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochRow:
        fixed = {"epoch", "checkpoint", "train_loss", "val_loss"}
        return cls(
            epoch=int(row["epoch"]),
            checkpoint=row.get("checkpoint"),
            train_loss=row.get("train_loss"),
            val_loss=row.get("val_loss"),
            metrics={
                k.removeprefix(VAL_PREFIX): float(v)
                for k, v in row.items()
                if k not in fixed and k.startswith(VAL_PREFIX)
            },
        )


@dataclass(frozen=True)
class RegisteredVersion:
    """The registry version training registered (``alias`` it was given, if any)."""

    name: str
    version: str
    alias: str | None = None


@dataclass(frozen=True)
class TrainedTracks:
    """The selection the run trained on (``CLAP_MAX_TRACKS`` tracks and their versions)."""

    data_version: str | None
    track_ids: tuple[int, ...]
    tracks_sha256: str | None = None


@dataclass(frozen=True)
class AlphaScore:
    """θ(α) of WiSE-FT on the validation split (metrics without the ``val_`` prefix)."""

    alpha: float
    val_loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WiseFt:
    """The weight interpolation training kept (``training/wise_ft.py``): its α, the
    checkpoint of θ(α) (the best epoch's own folder when α = 1) and every α scored."""

    alpha: float
    checkpoint: str
    grid: tuple[AlphaScore, ...] = ()

    @property
    def chosen(self) -> AlphaScore:
        return next(g for g in self.grid if g.alpha == self.alpha)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WiseFt:
        return cls(
            alpha=float(data["alpha"]),
            checkpoint=str(data["checkpoint"]),
            grid=tuple(
                AlphaScore(float(g["alpha"]), float(g["val_loss"]), dict(g.get("metrics", {})))
                for g in data.get("grid", [])
            ),
        )


@dataclass(frozen=True)
class TrainingReport:
    mlflow_run_id: str | None = None
    model_source: str = ""
    device: str = ""
    best_epoch: int = 0
    best_checkpoint: str = ""
    epochs: tuple[EpochRow, ...] = ()
    splits: dict[str, list[int]] = field(default_factory=dict)
    registered_model: RegisteredVersion | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Extras beyond the contract, for reports and the comparison asset.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    split_mode: str | None = None
    validation_fingerprint: str | None = None
    data_versions: dict[str, str] = field(default_factory=dict)
    selection: TrainedTracks | None = None
    world_size: int = 1
    stopped_early: bool = False
    wall_time_s: float = 0.0
    train_clips_per_second: float = 0.0
    # The registered weights when WiSE-FT ran (None: the best epoch's, as before it existed).
    wise_ft: WiseFt | None = None

    def split(self, name: str) -> list[int]:
        return list(self.splits.get(name, []))

    def all_split_ids(self) -> frozenset[int]:
        return frozenset(int(i) for ids in self.splits.values() for i in ids)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["epochs"] = [row.to_dict() for row in self.epochs]
        if self.selection is not None:
            out["selection"] = {
                "data_version": self.selection.data_version,
                "tracks_sha256": self.selection.tracks_sha256,
                "track_ids": list(self.selection.track_ids),
            }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def write(self, path: Path) -> None:
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training.json") -> TrainingReport:
        try:
            registered = data.get("registered_model")
            selection = data.get("selection")
            return cls(
                mlflow_run_id=data.get("mlflow_run_id"),
                model_source=str(data.get("model_source", "")),
                device=str(data.get("device", "")),
                best_epoch=int(data.get("best_epoch", 0)),
                best_checkpoint=str(data.get("best_checkpoint", "")),
                epochs=tuple(EpochRow.from_dict(r) for r in data.get("epochs", [])),
                splits=_splits(data.get("splits", {}), source),
                registered_model=RegisteredVersion(
                    name=str(registered["name"]),
                    version=str(registered["version"]),
                    alias=registered.get("alias"),
                )
                if registered
                else None,
                config=dict(data.get("config", {})),
                mlflow_tracking_uri=data.get("mlflow_tracking_uri"),
                mlflow_experiment_id=data.get("mlflow_experiment_id"),
                split_mode=data.get("split_mode"),
                validation_fingerprint=data.get("validation_fingerprint"),
                data_versions=dict(data.get("data_versions", {})),
                selection=TrainedTracks(
                    data_version=selection.get("data_version"),
                    track_ids=tuple(int(i) for i in selection.get("track_ids", [])),
                    tracks_sha256=selection.get("tracks_sha256"),
                )
                if selection
                else None,
                world_size=int(data.get("world_size", 1)),
                stopped_early=bool(data.get("stopped_early", False)),
                wall_time_s=float(data.get("wall_time_s", 0.0)),
                train_clips_per_second=float(data.get("train_clips_per_second", 0.0)),
                wise_ft=WiseFt.from_dict(data["wise_ft"]) if data.get("wise_ft") else None,
            )
        except TrainingReportError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrainingReportError(
                f"{source}: not a training report ({type(exc).__name__}: {exc})"
            ) from exc

    @classmethod
    def read(cls, path: Path, required: tuple[str, ...] = ()) -> TrainingReport:
        """The report at ``path``; FileNotFoundError when there is none yet.

        ``required`` keys must be present (``CONTRACT_KEYS`` for readers that evaluate).
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainingReportError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise TrainingReportError(f"{path} is not a JSON object")
        missing = [k for k in required if k not in data]
        if missing:
            raise TrainingReportError(f"{path} lacks key(s) {missing}")
        return cls.from_dict(data, source=str(path))


def _splits(raw: Any, source: str) -> dict[str, list[int]]:
    if not isinstance(raw, dict):
        raise TrainingReportError(f"{source}: splits must be an object of track-id lists")
    out: dict[str, list[int]] = {}
    for name, ids in raw.items():
        if not isinstance(ids, list):
            raise TrainingReportError(f"{source}: splits.{name} must be a list of track ids")
        out[name] = [int(i) for i in ids]
    return out
