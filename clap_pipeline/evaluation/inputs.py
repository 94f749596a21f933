"""What evaluation reads: its knobs, the paths, training's manifest, the clips, the genres.

Inputs are what training left behind: ``reports/training.json`` (splits, the
pre-trained ``model_source``, the best and per-epoch checkpoints, the MLflow run),
``prompts.parquet``, the ``waveforms/`` dataset and DuckDB ``tracks`` (read-only, for
``track_genre_top``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.dataset import Prompts
from clap_pipeline.knobs import DEVICE, EMBED_BATCH_SIZE, check, knob
from clap_pipeline.sections import SECTIONS_NAME
from clap_pipeline.training_report import CONTRACT_KEYS, TrainingReport, TrainingReportError
from clap_pipeline.waveform_reader import WaveformIndex

REPORT_NAME = "evaluation.json"
SPLITS = ("test", "validation")  # the manifest's split names, as the report keys them
MODELS = ("zero_shot", "fine_tuned")  # always evaluated
WISE_FT = "wise_ft"  # WiSE-FT's interpolated weights, when training kept them


class EvaluationError(RuntimeError):
    """Evaluation cannot run; the message names the file, setting or asset to fix."""


@dataclass(frozen=True)
class EvalConfig:
    """Every evaluation setting, each a knob (knobs.py)."""

    batch_size: int = EMBED_BATCH_SIZE.field()
    device: str = DEVICE.field()
    n_bootstrap: int = knob(1000, "bootstrap resamples per interval", ge=1)
    random_rounds: int = knob(1000, "random rankings for the empirical baseline", ge=1)
    confidence: float = knob(0.95, "confidence of the bootstrap intervals", gt=0, lt=1)
    seed: int = knob(0, "seed of the bootstrap and the random baseline")
    qualitative_clips: int = knob(
        10, "first test clips shown with their top-1 prompt per epoch", ge=0
    )
    include_validation: bool = knob(True, "also evaluate the validation split")
    log_to_mlflow: bool = knob(
        True, "log the metrics and files to the training's MLflow run", run_config=False
    )

    def validate(self) -> None:
        """EvaluationError naming every knob out of its bounds (knobs.check)."""
        try:
            check(self, "evaluation config")
        except ConfigError as exc:
            raise EvaluationError(str(exc)) from exc


@dataclass(frozen=True)
class EvalInputs:
    manifest_path: Path
    prompts_path: Path
    waveforms_dir: Path
    duckdb_path: Path
    window_embeddings_dir: Path
    report_path: Path
    tracking_uri: str
    sections_path: Path | None = None  # which genre plays where (moment accuracy), if any

    @classmethod
    def from_settings(cls, settings: Settings, tracking_uri: str | None = None) -> EvalInputs:
        return cls(
            manifest_path=settings.training_manifest_path,
            prompts_path=settings.prompts_path,
            waveforms_dir=settings.waveforms_dir,
            duckdb_path=settings.duckdb_path,
            window_embeddings_dir=settings.window_embeddings_dir,
            report_path=report_path(settings),
            tracking_uri=tracking_uri or settings.mlflow_tracking_uri,
            sections_path=settings.metadata_dir / SECTIONS_NAME,
        )


def report_path(settings: Settings) -> Path:
    """Where ``evaluation.json`` lives for these settings."""
    return settings.reports_dir / REPORT_NAME


def load_manifest(path: Path) -> TrainingReport:
    """``reports/training.json`` with its contract checked (clear error naming the file)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(
            f"{path} does not exist: materialize the `clap_model` asset first (training writes it)"
        )
    try:
        manifest = TrainingReport.read(path, required=CONTRACT_KEYS)
    except TrainingReportError as exc:
        raise EvaluationError(f"{exc}: re-materialize `clap_model`") from exc
    for split in SPLITS:
        if split not in manifest.splits:
            raise EvaluationError(f"{path}: splits.{split} must be a list of track ids")
    best = Path(manifest.best_checkpoint)
    if not (best / "config.json").exists():
        raise EvaluationError(
            f"{path}: best_checkpoint {best} is not a save_pretrained folder (missing or "
            "deleted?): re-materialize `clap_model`"
        )
    return manifest


def model_sources(manifest: TrainingReport) -> dict[str, str]:
    """Each evaluated model's weights: zero-shot, the best epoch, WiSE-FT's theta(alpha)."""
    sources = {"zero_shot": manifest.model_source, "fine_tuned": manifest.best_checkpoint}
    if manifest.wise_ft is not None:
        sources[WISE_FT] = manifest.wise_ft.checkpoint
    return sources


@dataclass
class SplitClips:
    """The clips of one split that have both a prompt and a waveform (in track_id order)."""

    name: str
    track_ids: list[int]
    prompts: list[str]
    expected: int  # size of the split in the manifest
    missing: list[int]  # split ids without a prompt or a waveform


def split_clips(
    name: str, ids: Sequence[int], prompts: Prompts, index: WaveformIndex
) -> SplitClips:
    wanted = sorted(int(t) for t in ids)
    usable = [t for t in wanted if t in prompts.prompt and t in index.locations]
    present = set(usable)
    return SplitClips(
        name=name,
        track_ids=usable,
        prompts=[prompts.prompt[t] for t in usable],
        expected=len(wanted),
        missing=[t for t in wanted if t not in present],
    )
