"""Evaluate the zero-shot and the fine-tuned CLAP: retrieval with intervals, examples, genres.

No Dagster here: the `evaluation` asset is a thin wrapper, and the same code runs
standalone on a GPU host::

    python -m clap_pipeline.evaluation.evaluate run            # evaluate, log to MLflow, write JSON
    python -m clap_pipeline.evaluation.evaluate show           # print reports/evaluation.json

Inputs are what training left behind: ``reports/training.json`` (splits, the
pre-trained ``model_source``, the best and per-epoch checkpoints, the MLflow
run), ``prompts.parquet``, the ``waveforms/`` dataset and DuckDB ``tracks``
(read-only, for ``track_genre_top``).

For the test split (and the validation split, labelled as such), each model's
text and audio embeddings are computed in batches (fp32, no grad; memory = one
batch of waveforms plus the N x d embeddings) and ranked with LAION-AI/CLAP's
conventions (``clap_pipeline.evaluation.metrics``: pessimistic ties, bootstrap over
per-query ranks) next to the random baseline (exact k/N and an empirical,
seeded random ranking over the same N).

Outputs: ``reports/evaluation.json`` (written atomically), metrics on the
training's MLflow run (``test_text_to_audio_recall_at_1`` ..., shorthand
``test_recall_at_1`` ... = text->audio, ``zeroshot_test_*``, ``validation_*``)
and, for the asset, Markdown tables and a bar chart.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.evaluation import genre_search
from clap_pipeline.evaluation.metrics import (
    DIRECTIONS,
    METRIC_NAMES,
    RANK_METRICS,
    UNIT_INTERVAL_METRICS,
    bootstrap_mean_interval,
    bootstrap_rank_metrics,
    empirical_random_metrics,
    match_ranks_blockwise,
    random_expected_metrics,
)
from clap_pipeline.progress import ProgressLog
from clap_pipeline.storage import duckdb_connection, table_exists, write_text_atomic
from clap_pipeline.tables import markdown_table, text_table

if TYPE_CHECKING:  # torch and transformers load lazily: `show` stays fast
    import torch

    from clap_pipeline.training.model import LoadedClap

REPORT_NAME = "evaluation.json"
CHART_NAME = "evaluation_chart.png"
GENRE_PROMPT = "This audio is a {genre} song."
SPLITS = ("test", "validation")
MODELS = ("zero_shot", "fine_tuned")
MANIFEST_KEYS = ("mlflow_run_id", "model_source", "best_epoch", "best_checkpoint", "splits")
SHORT_DIRECTION = {"text_to_audio": "text->audio", "audio_to_text": "audio->text"}
SHORT_METRIC = {
    "recall_at_1": "R@1",
    "recall_at_5": "R@5",
    "recall_at_10": "R@10",
    "median_rank": "median rank",
    "mean_rank": "mean rank",
    "map_at_10": "mAP@10",
}

Log = Callable[[str], None]


class EvaluationError(RuntimeError):
    """Evaluation cannot run; the message names the file, setting or asset to fix."""


# --------------------------------------------------------------------------- config and inputs


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32  # clips per forward pass (memory bound)
    device: str = "auto"  # auto = CUDA, else MPS, else CPU
    n_bootstrap: int = 1000  # bootstrap resamples per interval
    random_rounds: int = 1000  # random rankings for the empirical baseline
    confidence: float = 0.95
    seed: int = 0  # bootstrap and random baseline
    qualitative_clips: int = 10  # first test clips shown with their top-1 prompt per epoch
    include_validation: bool = True
    log_to_mlflow: bool = True

    def validate(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.n_bootstrap < 1 or self.random_rounds < 1:
            problems.append("n_bootstrap and random_rounds must be >= 1")
        if not 0 < self.confidence < 1:
            problems.append(f"confidence must be in (0, 1), got {self.confidence}")
        if self.qualitative_clips < 0:
            problems.append(f"qualitative_clips must be >= 0, got {self.qualitative_clips}")
        if problems:
            raise EvaluationError("invalid evaluation config: " + "; ".join(problems))


@dataclass(frozen=True)
class EvalInputs:
    manifest_path: Path
    prompts_path: Path
    waveforms_dir: Path
    duckdb_path: Path
    report_path: Path
    tracking_uri: str

    @classmethod
    def from_settings(cls, settings: Settings, tracking_uri: str | None = None) -> EvalInputs:
        return cls(
            manifest_path=settings.training_manifest_path,
            prompts_path=settings.prompts_path,
            waveforms_dir=settings.waveforms_dir,
            duckdb_path=settings.duckdb_path,
            report_path=settings.reports_dir / REPORT_NAME,
            tracking_uri=tracking_uri or settings.mlflow_tracking_uri,
        )


def load_manifest(path: Path) -> dict[str, Any]:
    """``reports/training.json`` with its contract checked (clear error naming the file)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(
            f"{path} does not exist: materialize the `clap_model` asset first (training writes it)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            f"{path} is not valid JSON ({exc}): re-materialize `clap_model`"
        ) from exc
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise EvaluationError(f"{path} lacks key(s) {missing}: re-materialize `clap_model`")
    for split in SPLITS:
        if not isinstance(manifest["splits"].get(split), list):
            raise EvaluationError(f"{path}: splits.{split} must be a list of track ids")
    best = Path(manifest["best_checkpoint"])
    if not (best / "config.json").exists():
        raise EvaluationError(
            f"{path}: best_checkpoint {best} is not a save_pretrained folder (missing or "
            "deleted?): re-materialize `clap_model`"
        )
    return manifest


def load_report(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"{path} does not exist: materialize the `evaluation` asset first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            f"{path} is not valid JSON ({exc}): re-materialize `evaluation`"
        ) from exc


# --------------------------------------------------------------------------- data


@dataclass
class SplitClips:
    """The clips of one split that have both a prompt and a waveform (in track_id order)."""

    name: str
    track_ids: list[int]
    prompts: list[str]
    expected: int  # size of the split in the manifest
    missing: list[int]  # split ids without a prompt or a waveform


def _split_clips(name: str, ids: Sequence[int], prompts, index) -> SplitClips:
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


def read_genres(duckdb_path: Path, track_ids: Sequence[int]) -> dict[int, str | None]:
    """``track_genre_top`` of the given tracks from DuckDB ``tracks`` (read-only)."""
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.exists():
        raise EvaluationError(f"{duckdb_path} does not exist: materialize the `tracks` asset")
    wanted = pa.table({"track_id": pa.array(sorted(set(track_ids)), pa.int64())})
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, "tracks"):
            raise EvaluationError(f"{duckdb_path} has no table `tracks`: materialize `tracks`")
        columns = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
        if "track_genre_top" not in columns:
            raise EvaluationError(
                f"{duckdb_path}: table `tracks` has no column track_genre_top: "
                "re-materialize `tracks`"
            )
        con.register("wanted_ids", wanted)
        rows = con.execute(
            "SELECT t.track_id, t.track_genre_top FROM tracks t JOIN wanted_ids USING (track_id)"
        ).fetchall()
    return {int(t): (g if g else None) for t, g in rows}


# --------------------------------------------------------------------------- encoding


class ClapEncoder:
    """Batched, no-grad fp32 text and audio embeddings of one loaded CLAP."""

    def __init__(self, loaded: LoadedClap, device: torch.device):
        from clap_pipeline.training.features import LogMelFeatures  # batched torch log-mel

        self.device = device
        self.model = loaded.model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.features = LogMelFeatures(loaded.feature_extractor).to(device).eval()

    def texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        from clap_pipeline.training.model import text_embeddings, tokenize

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                tokens = tokenize(self.tokenizer, chunk, self.device)
                out.append(text_embeddings(self.model, tokens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def clips(
        self,
        batches: Iterator[tuple[np.ndarray, np.ndarray]],
        expected_ids: Sequence[int],
        progress: ProgressLog | None = None,
    ) -> np.ndarray:
        import torch

        from clap_pipeline.search.embeddings import clip_embeddings

        out, seen = [], []
        with torch.inference_mode():
            for ids, waves in batches:
                out.append(clip_embeddings(self.model, self.features, waves, self.device))
                seen.extend(int(t) for t in ids)
                if progress:
                    progress.update(len(seen))
        if seen != list(expected_ids):  # the pairing of text i with clip i depends on it
            raise EvaluationError("waveform batches came back in an unexpected order")
        return np.concatenate(out)


def _encoder(source: str, device: torch.device) -> ClapEncoder:
    from clap_pipeline.training.model import ModelLoadError, load_clap

    try:
        return ClapEncoder(load_clap(source), device)
    except ModelLoadError as exc:
        raise EvaluationError(str(exc)) from exc


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- one model


@dataclass
class _ModelRun:
    """One model's embeddings per split (kept only for the small qualitative/genre parts)."""

    text: dict[str, np.ndarray]
    audio: dict[str, np.ndarray]


def _embed_splits(
    encoder: ClapEncoder,
    clips: dict[str, SplitClips],
    index,
    batch_size: int,
    label: str,
    log: Log | None,
) -> _ModelRun:
    from clap_pipeline.training.data import ordered_batches

    run = _ModelRun(text={}, audio={})
    for name, split in clips.items():
        if not split.track_ids:
            continue
        progress = ProgressLog(f"{label} {name}", len(split.track_ids), log, every_s=15.0)
        run.text[name] = encoder.texts(split.prompts, batch_size)
        run.audio[name] = encoder.clips(
            ordered_batches(index, split.track_ids, batch_size), split.track_ids, progress
        )
    return run


def prompt_groups(prompts: Sequence[str]) -> np.ndarray:
    """One id per distinct prompt text: pairs with identical prompts share it."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(p, len(ids)) for p in prompts], dtype=np.int64)


def _retrieval(
    text: np.ndarray, audio: np.ndarray, config: EvalConfig, groups: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    ranks = {
        "text_to_audio": match_ranks_blockwise(text, audio, groups=groups),
        "audio_to_text": match_ranks_blockwise(audio, text, groups=groups),
    }
    return bootstrap_rank_metrics(
        ranks, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )


def _random_baselines(n: int, config: EvalConfig) -> dict[str, Any]:
    exact_one = random_expected_metrics(n)
    exact = {f"{d}_{m}": exact_one[m] for d in DIRECTIONS for m in METRIC_NAMES}
    empirical = empirical_random_metrics(
        n, rounds=config.random_rounds, seed=config.seed, confidence=config.confidence
    )
    return {"exact": exact, "empirical": empirical}


# --------------------------------------------------------------------------- genres


def _genre_result(
    audio: np.ndarray, genre_text: np.ndarray, labels: np.ndarray, config: EvalConfig
) -> dict[str, Any]:
    # Ties between genre prompts go to the first genre in alphabetical order (argmax).
    predicted = np.argmax(audio @ genre_text.T, axis=1)
    correct = (predicted == labels).astype(np.float64)
    g = genre_text.shape[0]
    confusion = np.zeros((g, g), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    low, high = bootstrap_mean_interval(
        correct, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )
    return {
        "accuracy": float(correct.mean()),
        "ci_low": low,
        "ci_high": high,
        "confusion": confusion.tolist(),  # rows = true genre, columns = predicted
    }


# --------------------------------------------------------------------------- qualitative


def _top1_rows(
    text: np.ndarray, audio_first: np.ndarray, split: SplitClips
) -> list[dict[str, Any]]:
    scores = audio_first @ text.T  # (Q, N): clip q against every prompt of the split
    best = np.argmax(scores, axis=1)  # ties: the lowest track_id's prompt
    rows = []
    for q, j in enumerate(best.tolist()):
        rows.append(
            {
                "top1_track_id": split.track_ids[j],
                "top1_prompt": split.prompts[j],
                "score": float(scores[q, j]),
                # Correct = the clip's own prompt text (identical prompts of other clips count).
                "correct": split.prompts[j] == split.prompts[q],
            }
        )
    return rows


def _qualitative_columns(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Zero-shot, then every epoch (checkpoint or "not kept"), the best one marked."""
    columns = [{"name": "zero-shot", "epoch": 0, "checkpoint": manifest["model_source"]}]
    best_epoch = int(manifest["best_epoch"])
    for row in manifest.get("epochs", []):
        epoch = int(row["epoch"])
        checkpoint = row.get("checkpoint")
        if epoch == best_epoch:
            checkpoint = manifest["best_checkpoint"]
        kept = bool(checkpoint) and (Path(checkpoint) / "config.json").exists()
        name = f"epoch {epoch}" + (" (best)" if epoch == best_epoch else "")
        columns.append({"name": name, "epoch": epoch, "checkpoint": checkpoint if kept else None})
    if not any(c["epoch"] == best_epoch for c in columns[1:]):
        columns.append(
            {
                "name": f"epoch {best_epoch} (best)",
                "epoch": best_epoch,
                "checkpoint": manifest["best_checkpoint"],
            }
        )
    return columns


# --------------------------------------------------------------------------- report


def evaluate(
    config: EvalConfig,
    inputs: EvalInputs,
    *,
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluate both models, write ``evaluation.json`` atomically, log to MLflow; return the report."""
    from clap_pipeline.training.data import Prompts, TrainingDataError, WaveformIndex

    config.validate()
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    manifest = load_manifest(inputs.manifest_path)
    if config.log_to_mlflow:  # fail before the expensive part
        check_mlflow_run(inputs.tracking_uri, manifest["mlflow_run_id"])
    try:
        prompts = Prompts.load(inputs.prompts_path)
        index = WaveformIndex.build(inputs.waveforms_dir)
    except TrainingDataError as exc:
        raise EvaluationError(str(exc)) from exc
    split_names = SPLITS if config.include_validation else ("test",)
    clips = {
        name: _split_clips(name, manifest["splits"][name], prompts, index) for name in split_names
    }
    for split in clips.values():
        if split.missing:
            say(
                f"{split.name}: {len(split.missing)} of {split.expected} clips have no prompt or "
                f"waveform (first: {split.missing[:5]}); evaluating the other {len(split.track_ids)}"
            )
    qual_split = clips["test"] if clips["test"].track_ids else clips.get("validation")
    from clap_pipeline.training.model import pick_device

    device = pick_device(config.device)
    say(
        f"evaluating on {device}: "
        + ", ".join(f"{s.name} {len(s.track_ids)} clips" for s in clips.values())
    )

    # Genres of the evaluated clips; the label set = genres present in test + validation.
    genre_of = read_genres(inputs.duckdb_path, [t for s in clips.values() for t in s.track_ids])
    genres = sorted({g for g in genre_of.values() if g})
    genre_prompts = [GENRE_PROMPT.format(genre=g) for g in genres]

    sources = {
        "zero_shot": str(manifest["model_source"]),
        "fine_tuned": str(manifest["best_checkpoint"]),
    }
    splits_report: dict[str, Any] = {}
    prompt_groups_of: dict[str, np.ndarray] = {}  # split -> one id per distinct prompt
    for name, split in clips.items():
        n = len(split.track_ids)
        splits_report[name] = {
            "n": n,
            "n_expected": split.expected,
            "missing_track_ids": split.missing,
            "models": {},
            "random": _random_baselines(n, config) if n else None,
        }
        groups = prompt_groups_of[name] = prompt_groups(split.prompts)
        splits_report[name]["identical_prompts"] = {
            "n_clips_sharing": int(np.isin(groups, np.flatnonzero(np.bincount(groups) > 1)).sum())
            if n
            else 0,
            "convention": "clips whose prompt text is identical to the match's are not counted "
            "above it (the strict numbers in `models` count them as misses)",
            "models": {},
        }
    genre_report: dict[str, Any] = {
        "prompt_template": GENRE_PROMPT,
        "genres": genres,
        "tie_rule": "argmax: ties go to the first genre in alphabetical order",
        "splits": {},
    }
    for name, split in clips.items():
        labelled = [i for i, t in enumerate(split.track_ids) if genre_of.get(t) in genres]
        counts = np.bincount(
            [genres.index(genre_of[split.track_ids[i]]) for i in labelled], minlength=len(genres)
        )
        genre_report["splits"][name] = {
            "n": len(labelled),
            "n_without_genre": len(split.track_ids) - len(labelled),
            "chance_accuracy": 1 / len(genres) if genres else None,
            "majority_accuracy": float(counts.max() / len(labelled)) if labelled else None,
            "counts": counts.tolist(),
            "models": {},
        }

    search_config = genre_search.GenreSearchConfig(
        n_bootstrap=config.n_bootstrap,
        random_rounds=config.random_rounds,
        confidence=config.confidence,
        seed=config.seed,
    )
    search_report: dict[str, Any] = {
        "queries": dict(genre_search.GENRE_QUERIES),
        "k": search_config.k,
        "min_tracks": genre_search.MIN_GENRE_TRACKS,
        "splits": {},
    }
    for name, split in clips.items():
        labels = [genre_of.get(t) for t in split.track_ids]
        eligible = genre_search.eligible_genres(labels)
        search_report["splits"][name] = {
            "n": len(split.track_ids),
            "genres": eligible,
            "prior": genre_search.prior_genre_search(labels, eligible, search_config)
            if eligible
            else None,
            "models": {},
        }

    qual_columns = _qualitative_columns(manifest)
    q = min(config.qualitative_clips, len(qual_split.track_ids)) if qual_split else 0
    qual_results: dict[str, list[dict[str, Any]] | None] = {}

    for model_key in MODELS:
        say(f"{model_key}: loading {sources[model_key]}")
        encoder = _encoder(sources[model_key], device)
        run = _embed_splits(encoder, clips, index, config.batch_size, model_key, log)
        for name, split in clips.items():
            if not split.track_ids:
                continue
            metrics = _retrieval(run.text[name], run.audio[name], config)
            splits_report[name]["models"][model_key] = {"source": sources[model_key], **metrics}
            merged = splits_report[name]["identical_prompts"]
            if merged["n_clips_sharing"]:
                merged["models"][model_key] = _retrieval(
                    run.text[name], run.audio[name], config, prompt_groups_of[name]
                )
            r5 = metrics["text_to_audio_recall_at_5"]["value"]
            say(f"{model_key} {name}: text->audio R@5 {r5:.3f} (N={len(split.track_ids)})")
        if genres:
            genre_text = encoder.texts(genre_prompts, config.batch_size)
            for name, split in clips.items():
                labelled = [i for i, t in enumerate(split.track_ids) if genre_of.get(t) in genres]
                if not labelled:
                    continue
                labels = np.array([genres.index(genre_of[split.track_ids[i]]) for i in labelled])
                genre_report["splits"][name]["models"][model_key] = _genre_result(
                    run.audio[name][labelled], genre_text, labels, config
                )
        for name, split in clips.items():
            block = search_report["splits"][name]
            if not block["genres"]:
                continue
            labels = [genre_of.get(t) for t in split.track_ids]
            block["models"][model_key] = {
                query_name: genre_search.model_genre_search(
                    encoder.texts(texts, config.batch_size),
                    run.audio[name],
                    labels,
                    block["genres"],
                    search_config,
                )
                for query_name, texts in genre_search.genre_queries(block["genres"]).items()
            }
        if q:
            rows = _top1_rows(run.text[qual_split.name], run.audio[qual_split.name][:q], qual_split)
            if model_key == "zero_shot":
                qual_results["zero-shot"] = rows
            else:
                qual_results["best"] = rows
        del encoder, run
        _release(device)

    # Every kept epoch checkpoint: only the first q clips and the split's prompts are encoded.
    qualitative: dict[str, Any] = {"split": qual_split.name if qual_split else None, "rows": []}
    if q:
        from clap_pipeline.training.data import ordered_batches

        first_ids = qual_split.track_ids[:q]
        for column in qual_columns[1:]:
            if column["checkpoint"] is None:
                qual_results[column["name"]] = None
            elif column["name"].endswith("(best)"):
                qual_results[column["name"]] = qual_results["best"]
            else:
                say(f"qualitative: {column['name']} from {column['checkpoint']}")
                encoder = _encoder(column["checkpoint"], device)
                text = encoder.texts(qual_split.prompts, config.batch_size)
                audio = encoder.clips(
                    ordered_batches(index, first_ids, config.batch_size), first_ids
                )
                qual_results[column["name"]] = _top1_rows(text, audio, qual_split)
                del encoder
                _release(device)
        qual_results.pop("best", None)
        qualitative["columns"] = [
            {"name": c["name"], "epoch": c["epoch"], "kept": c["checkpoint"] is not None}
            for c in qual_columns
        ]
        for i, tid in enumerate(first_ids):
            qualitative["rows"].append(
                {
                    "track_id": tid,
                    "prompt": qual_split.prompts[i],
                    "results": {
                        name: (None if rows is None else rows[i])
                        for name, rows in qual_results.items()
                    },
                }
            )

    report: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_run_id": manifest["mlflow_run_id"],
        "model_source": str(manifest["model_source"]),
        "best_checkpoint": str(manifest["best_checkpoint"]),
        "best_epoch": int(manifest["best_epoch"]),
        "device": str(device),
        "config": asdict(config),
        "conventions": {
            "rank": "0-based position of the match among N candidates, scores descending",
            "ties": "pessimistic: every other candidate scoring >= the match ranks above it",
            "median_rank": "floor(median(rank)) + 1",
            "mean_rank": "mean(rank) + 1",
            "map_at_10": "mean(1/(rank+1) if rank < 10 else 0)",
            "bootstrap": (
                f"percentile {config.confidence:.0%} interval over {config.n_bootstrap} seeded "
                "resamples of the per-query ranks (pool of N candidates kept fixed; both "
                "directions share the resampled pair indices)"
            ),
            "random_empirical": (
                f"mean over {config.random_rounds} seeded random rankings of the same N; "
                f"interval = central {config.confidence:.0%} of a single random model's score"
            ),
            "precision": "fp32, no autocast",
        },
        "splits": splits_report,
        "genre": genre_report,
        "genre_search": search_report,
        "qualitative": qualitative,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if config.log_to_mlflow:
        report["mlflow"] = log_to_mlflow(report, inputs.tracking_uri)
        say(
            f"logged {len(report['mlflow']['metrics'])} metrics to MLflow run {report['mlflow_run_id']}"
        )
    write_text_atomic(inputs.report_path, json.dumps(report, indent=1))
    if config.log_to_mlflow:
        _log_artifacts(report, inputs)
    say(f"evaluation written to {inputs.report_path} in {report['seconds']:.1f} s")
    return report


# --------------------------------------------------------------------------- MLflow


def mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The flat metric names logged on the training run.

    ``<split>_<key>`` (+ ``_ci_low``/``_ci_high``) = fine-tuned, ``<split>_<metric>`` =
    its text->audio shorthand (``test_recall_at_1``), ``zeroshot_<split>_<key>``,
    ``random_<split>_<metric>`` (exact), ``<split>_n`` and the genre accuracies.
    ``validation_*`` is distinct from training's per-epoch ``val_*``.
    """
    out: dict[str, float] = {}
    for split, block in report["splits"].items():
        if not block["n"]:
            continue
        out[f"{split}_n"] = float(block["n"])
        tuned, zero = block["models"]["fine_tuned"], block["models"]["zero_shot"]
        for direction in DIRECTIONS:
            for name in METRIC_NAMES:
                key = f"{direction}_{name}"
                out[f"{split}_{key}"] = tuned[key]["value"]
                out[f"{split}_{key}_ci_low"] = tuned[key]["ci_low"]
                out[f"{split}_{key}_ci_high"] = tuned[key]["ci_high"]
                out[f"zeroshot_{split}_{key}"] = zero[key]["value"]
        for name in METRIC_NAMES:
            out[f"{split}_{name}"] = tuned[f"text_to_audio_{name}"]["value"]
            out[f"random_{split}_{name}"] = block["random"]["exact"][f"text_to_audio_{name}"]
        search = report.get("genre_search", {}).get("splits", {}).get(split, {})
        for model_key, prefix in (("fine_tuned", ""), ("zero_shot", "zeroshot_")):
            for query_name, result in search.get("models", {}).get(model_key, {}).items():
                for score in genre_search.SCORE_NAMES:
                    out[f"{prefix}{split}_genre_search_{query_name}_{score}"] = result[score][
                        "value"
                    ]
        if search.get("prior"):
            for score in genre_search.SCORE_NAMES:
                out[f"prior_{split}_genre_search_{score}"] = search["prior"][score]["value"]
        genre = report["genre"]["splits"].get(split, {}).get("models", {})
        if "fine_tuned" in genre:
            out[f"{split}_genre_accuracy"] = genre["fine_tuned"]["accuracy"]
            out[f"zeroshot_{split}_genre_accuracy"] = genre["zero_shot"]["accuracy"]
    return out


def check_mlflow_run(tracking_uri: str, run_id: str):
    """The MLflow client, once the training run is known to exist in the store."""
    from mlflow.exceptions import MlflowException

    from clap_pipeline import tracking

    client = tracking.client(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise EvaluationError(
            f"MLflow run {run_id} (mlflow_run_id in training.json) is not in the tracking store "
            f"{tracking_uri}: point the `mlflow` resource / MLFLOW_TRACKING_URI at the store "
            "training used, or re-materialize `clap_model`"
        ) from exc
    return client


def log_to_mlflow(report: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    from mlflow.entities import Metric

    run_id = report["mlflow_run_id"]
    client = check_mlflow_run(tracking_uri, run_id)
    metrics = mlflow_metrics(report)
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())]
    for start in range(0, len(batch), 500):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=batch[start : start + 500])
    client.set_tag(run_id, "evaluation_created_at", report["created_at"])
    return {"run_id": run_id, "tracking_uri": tracking_uri, "metrics": sorted(metrics)}


def _log_artifacts(report: dict[str, Any], inputs: EvalInputs) -> None:
    import tempfile

    from clap_pipeline import tracking

    client = tracking.client(inputs.tracking_uri)
    run_id = report["mlflow_run_id"]
    client.log_artifact(run_id, str(inputs.report_path), artifact_path="evaluation")
    if report["splits"].get("test", {}).get("n"):
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / CHART_NAME
            png.write_bytes(comparison_chart_png(report))
            client.log_artifact(run_id, str(png), artifact_path="evaluation")


# --------------------------------------------------------------------------- checks


def range_problems(report: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Why the report is out of range or stale ([] = fine): metrics in [0, 1], ranks in
    [1, N], N = the manifest's test split, the same training run."""
    problems = []
    if report.get("mlflow_run_id") != manifest.get("mlflow_run_id"):
        problems.append(
            f"report is for run {report.get('mlflow_run_id')}, training.json for "
            f"{manifest.get('mlflow_run_id')}: re-materialize `evaluation`"
        )
    expected_test = len(manifest["splits"]["test"])
    test = report["splits"].get("test", {})
    if test.get("n") != expected_test:
        problems.append(f"test N = {test.get('n')} but the test split has {expected_test} clips")
    for split, block in report["splits"].items():
        n = block["n"]
        for model, metrics in block["models"].items():
            for key, stat in metrics.items():
                if key == "source":
                    continue
                metric = key.split("_", 3)[-1]
                low, high = (1.0, float(n)) if metric in RANK_METRICS else (0.0, 1.0)
                for part in ("value", "ci_low", "ci_high"):
                    value = stat[part]
                    if not (math.isfinite(value) and low <= value <= high):
                        problems.append(
                            f"{split} {model} {key} {part} = {value} outside [{low}, {high}]"
                        )
        if block["random"]:
            for key, value in block["random"]["exact"].items():
                if key.split("_", 3)[-1] in UNIT_INTERVAL_METRICS and not 0 <= value <= 1:
                    problems.append(f"{split} random {key} = {value} outside [0, 1]")
    for split, block in report.get("genre_search", {}).get("splits", {}).items():
        for model, queries in block["models"].items():
            for query_name, result in queries.items():
                for score in genre_search.SCORE_NAMES:
                    for part, value in result[score].items():
                        if not (math.isfinite(value) and 0 <= value <= 1):
                            problems.append(
                                f"{split} {model} genre search {query_name} {score} {part} = "
                                f"{value} outside [0, 1]"
                            )
    for split, block in report["genre"]["splits"].items():
        for model, result in block["models"].items():
            if not 0 <= result["accuracy"] <= 1:
                problems.append(f"{split} {model} genre accuracy {result['accuracy']} out of range")
    return problems


def beats_random(report: dict[str, Any]) -> tuple[bool, str]:
    """Whether the fine-tuned model's test text->audio R@5 beats random's (k/N)."""
    test = report["splits"].get("test")
    if not test or not test["n"]:
        return False, "no test clips: the split is empty, nothing to compare"
    tuned = test["models"]["fine_tuned"]["text_to_audio_recall_at_5"]["value"]
    exact = test["random"]["exact"]["text_to_audio_recall_at_5"]
    upper = test["random"]["empirical"]["text_to_audio_recall_at_5"]["ci_high"]
    verdict = "beats" if tuned > exact else "does NOT beat"
    detail = (
        f"fine-tuned test text->audio R@5 {tuned:.3f} {verdict} random {exact:.3f} "
        f"(5/N, N={test['n']}; a random model reaches up to {upper:.3f} at "
        f"{report['config']['confidence']:.0%})"
    )
    return tuned > exact, detail


def _beats(stat: dict[str, float], reference: float) -> bool:
    return stat["ci_low"] > reference


def verdict_lines(report: dict[str, Any], split: str = "test") -> list[str]:
    """A few sentences a newcomer can read: does fine-tuning help, and how sure are we."""
    block = report["splits"].get(split)
    if not block or not block["n"]:
        return [f"Verdict: no {split} clips, nothing to judge."]
    conf = f"{report['config']['confidence']:.0%}"
    n = block["n"]
    lines = [f"Verdict on the {split} split ({n} clips the model never trained on):"]
    helps = True
    for direction, what in (
        ("text_to_audio", "finding a clip from its own description"),
        ("audio_to_text", "finding the description of a clip"),
    ):
        key = f"{direction}_recall_at_5"
        tuned = block["models"]["fine_tuned"][key]
        zero = block["models"]["zero_shot"][key]["value"]
        chance = block["random"]["exact"][key]
        ok = _beats(tuned, chance) and tuned["value"] > zero
        helps &= ok
        lines.append(
            f"  - {what} (R@5, {SHORT_DIRECTION[direction]}): fine-tuned {_fmt_ci('r', tuned)} "
            f"vs zero-shot {zero:.3f} vs random {chance:.3f}"
            + ("" if ok else "  <- not clearly better")
        )
    merged = block.get("identical_prompts", {})
    if merged.get("models", {}).get("fine_tuned"):
        tuned = merged["models"]["fine_tuned"]
        lines.append(
            f"    ({merged['n_clips_sharing']} of {n} clips share their exact prompt with another "
            "clip; counting those as hits too: fine-tuned R@5 text->audio "
            f"{tuned['text_to_audio_recall_at_5']['value']:.3f}, audio->text "
            f"{tuned['audio_to_text_recall_at_5']['value']:.3f})"
        )
    search = report.get("genre_search", {}).get("splits", {}).get(split, {})
    models = search.get("models", {})
    if models.get("fine_tuned"):
        score = f"precision_at_{report['genre_search']['k']}"
        template = report["genre_search"]["queries"]["genre_music"]
        tuned = models["fine_tuned"]["genre_music"][score]
        zero = models["zero_shot"]["genre_music"][score]["value"]
        prior = search["prior"][score]["value"]
        ok = _beats(tuned, search["prior"][score]["ci_high"]) and tuned["value"] > zero
        helps &= ok
        lines.append(
            f"  - searching {template.format(genre='<genre>')!r} over {len(search['genres'])} "
            f"genres: {tuned['value']:.0%} of the top {report['genre_search']['k']} are of that "
            f"genre [{tuned['ci_low']:.0%}, {tuned['ci_high']:.0%}], vs {zero:.0%} zero-shot "
            f"and {prior:.0%} by chance (the genres' share)"
            + ("" if ok else "  <- not clearly better")
        )
    lines.append(
        f"  => fine-tuning helps: every fine-tuned number beats zero-shot, and its {conf} "
        "interval lies above chance."
        if helps
        else f"  => not shown: at least one number above is not clearly better (its {conf} "
        "interval reaches chance, or zero-shot is as good). More tracks or epochs may help."
    )
    return lines


# --------------------------------------------------------------------------- presentation


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if metric in RANK_METRICS else f"{value:.3f}"


def _fmt_ci(metric: str, stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    return (
        f"{_fmt(metric, stat['value'])} "
        f"[{_fmt(metric, stat['ci_low'])}, {_fmt(metric, stat['ci_high'])}]"
    )


def _metric_rows(block: dict[str, Any]) -> list[list[str]]:
    rows = []
    models = block["models"]
    for direction in DIRECTIONS:
        for name in METRIC_NAMES:
            key = f"{direction}_{name}"
            rows.append(
                [
                    SHORT_DIRECTION[direction],
                    SHORT_METRIC[name],
                    _fmt_ci(name, models.get("zero_shot", {}).get(key)),
                    _fmt_ci(name, models.get("fine_tuned", {}).get(key)),
                    _fmt(name, block["random"]["exact"][key]),
                    _fmt_ci(name, block["random"]["empirical"][key]),
                ]
            )
    return rows


def _headers(report: dict[str, Any]) -> list[str]:
    return [
        "direction",
        "metric",
        "zero-shot",
        f"fine-tuned (epoch {report['best_epoch']})",
        "random (exact)",
        "random (empirical)",
    ]


def _split_title(report: dict[str, Any], split: str) -> str:
    block = report["splits"][split]
    missing = f", {len(block['missing_track_ids'])} missing" if block["missing_track_ids"] else ""
    return f"{split} split (N = {block['n']} of {block['n_expected']}{missing})"


def format_evaluation_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table for the terminal (``make demo`` prints it)."""
    conf = report["config"]["confidence"]
    lines = [
        f"Evaluation of {report['model_source']} (zero-shot) vs the fine-tuned best epoch "
        f"{report['best_epoch']} (MLflow run {report['mlflow_run_id']})",
        f"values with bootstrap {conf:.0%} intervals [low, high]; ranks are 1-based, "
        "ties count against the match",
    ]
    headers = _headers(report)
    for split in report["splits"]:
        block = report["splits"][split]
        lines += ["", _split_title(report, split)]
        if not block["n"]:
            lines.append("  (no clips)")
            continue
        lines.append(text_table(headers, _metric_rows(block)))
    genre = report["genre"]
    if genre["genres"]:
        lines += ["", f"zero-shot genre classification, prompt {genre['prompt_template']!r}:"]
        for split, block in genre["splits"].items():
            if not block["models"]:
                continue
            zero, tuned = block["models"]["zero_shot"], block["models"]["fine_tuned"]
            lines.append(
                f"  {split}: {len(genre['genres'])} genres, N = {block['n']}: accuracy "
                f"zero-shot {_fmt_ci('acc', _acc(zero))}, fine-tuned {_fmt_ci('acc', _acc(tuned))}, "
                f"chance {block['chance_accuracy']:.3f}, majority {block['majority_accuracy']:.3f}"
            )
    search_lines = _genre_search_lines(report)
    if search_lines:
        lines += ["", *search_lines]
    ok, detail = beats_random(report)
    lines += ["", ("OK: " if ok else "WARNING: ") + detail, "", *verdict_lines(report)]
    return "\n".join(lines)


def _genre_search_rows(report: dict[str, Any], split: str) -> list[list[str]]:
    block = report["genre_search"]["splits"][split]
    rows = []
    for query_name, template in report["genre_search"]["queries"].items():
        for score in genre_search.SCORE_NAMES:
            rows.append(
                [
                    template.format(genre="<genre>"),
                    score.replace("_at_", "@").replace("_", " "),
                    *(_fmt_ci("s", block["models"][key][query_name][score]) for key in MODELS),
                    _fmt_ci("s", block["prior"][score]),
                ]
            )
    return rows


_GENRE_SEARCH_HEADERS = ["query", "score", "zero-shot", "fine-tuned", "genre prior (random)"]


def _genre_search_lines(report: dict[str, Any]) -> list[str]:
    search = report.get("genre_search")
    if not search:
        return []
    lines = []
    for split, block in search["splits"].items():
        if not block["models"]:
            continue
        lines.append(
            f"genre search, {split} split: each genre with >= {search['min_tracks']} clips "
            f"({len(block['genres'])}) queried, averaged over genres"
        )
        lines.append(text_table(_GENRE_SEARCH_HEADERS, _genre_search_rows(report, split)))
    return lines


def genre_search_markdown(report: dict[str, Any]) -> str:
    search = report.get("genre_search")
    if not search or not any(b["models"] for b in search["splits"].values()):
        return f"(no genre with >= {genre_search.MIN_GENRE_TRACKS} clips in a split)"
    parts = []
    for split, block in search["splits"].items():
        if not block["models"]:
            continue
        parts += [
            f"**{split}** (N = {block['n']}, genres: {', '.join(block['genres'])})\n",
            markdown_table(_GENRE_SEARCH_HEADERS, _genre_search_rows(report, split)),
            "",
        ]
    parts.append(
        f"Precision@{search['k']} and average precision of the genre's clips among the split's "
        "clips, macro-averaged over genres; bootstrap intervals over clips; the prior is a "
        "random ranking (precision@k = the genre's share)."
    )
    return "\n".join(parts)


def _acc(result: dict[str, Any]) -> dict[str, float]:
    return {"value": result["accuracy"], "ci_low": result["ci_low"], "ci_high": result["ci_high"]}


def retrieval_markdown(report: dict[str, Any]) -> str:
    parts = []
    for split, block in report["splits"].items():
        parts.append(f"**{_split_title(report, split)}**\n")
        parts.append(
            markdown_table(_headers(report), _metric_rows(block)) if block["n"] else "(none)"
        )
        parts.append("")
    conf = report["config"]["confidence"]
    parts.append(
        f"Bootstrap {conf:.0%} intervals over per-query ranks; random (exact) = k/N, "
        "random (empirical) = seeded random rankings of the same N."
    )
    return "\n".join(parts)


def qualitative_markdown(report: dict[str, Any]) -> str:
    qual = report["qualitative"]
    if not qual["rows"]:
        return "(no clips)"
    names = [c["name"] for c in qual["columns"]]
    rows = []
    for row in qual["rows"]:
        cells = [row["track_id"], row["prompt"]]
        for name in names:
            r = row["results"].get(name)
            cells.append(
                "not kept"
                if r is None
                else f"{'✓' if r['correct'] else '✗'} {r['top1_prompt']} ({r['score']:.3f})"
            )
        rows.append(cells)
    title = f"Top-1 retrieved prompt for the first {len(rows)} {qual['split']} clips\n\n"
    return title + markdown_table(["track", "true prompt", *names], rows)


def genre_markdown(report: dict[str, Any]) -> str:
    genre = report["genre"]
    if not genre["genres"]:
        return "(no genre_top among the evaluated tracks)"
    parts = [f"Prompt: `{genre['prompt_template']}` over {len(genre['genres'])} genres\n"]
    for split, block in genre["splits"].items():
        if not block["models"]:
            continue
        acc_rows = [
            [label, _fmt_ci("acc", _acc(block["models"][key]))]
            for key, label in (("zero_shot", "zero-shot"), ("fine_tuned", "fine-tuned"))
        ]
        acc_rows += [
            ["chance (1/G)", f"{block['chance_accuracy']:.3f}"],
            ["majority class", f"{block['majority_accuracy']:.3f}"],
        ]
        parts += [
            f"**{split}** (N = {block['n']})\n",
            markdown_table(["model", "accuracy"], acc_rows),
        ]
        for key, label in (("zero_shot", "zero-shot"), ("fine_tuned", "fine-tuned")):
            confusion = block["models"][key]["confusion"]
            rows = [[g, *counts] for g, counts in zip(genre["genres"], confusion, strict=True)]
            parts += [
                f"\n{label} confusion (rows = true genre, columns = predicted)\n",
                markdown_table(["true \\ predicted", *genre["genres"]], rows),
            ]
        parts.append("")
    return "\n".join(parts)


def comparison_chart_png(report: dict[str, Any], split: str = "test") -> bytes:
    """Grouped bars of R@1/5/10 and mAP@10, zero-shot vs fine-tuned vs random, per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    block = report["splits"][split]
    names = ["recall_at_1", "recall_at_5", "recall_at_10", "map_at_10"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90, sharey=True)
    x = np.arange(len(names))
    width = 0.27
    for ax, direction in zip(axes, DIRECTIONS, strict=True):
        series = [
            ("zero-shot", block["models"]["zero_shot"], "tab:gray"),
            (
                f"fine-tuned (epoch {report['best_epoch']})",
                block["models"]["fine_tuned"],
                "tab:blue",
            ),
            ("random (empirical)", block["random"]["empirical"], "tab:red"),
        ]
        for i, (label, stats, color) in enumerate(series):
            values = np.array([stats[f"{direction}_{n}"]["value"] for n in names])
            lows = np.array([stats[f"{direction}_{n}"]["ci_low"] for n in names])
            highs = np.array([stats[f"{direction}_{n}"]["ci_high"] for n in names])
            ax.bar(x + (i - 1) * width, values, width, label=label, color=color,
                   yerr=[values - lows, highs - values], capsize=2)  # fmt: skip
        exact = [block["random"]["exact"][f"{direction}_{n}"] for n in names]
        ax.scatter(x + width, exact, marker="_", s=200, color="black", label="random k/N", zorder=3)
        ax.set_xticks(x, [SHORT_METRIC[n] for n in names])
        ax.set_title(f"{SHORT_DIRECTION[direction]} ({split}, N={block['n']})")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def chart_markdown(png: bytes) -> str:
    return f"![zero-shot vs fine-tuned vs random](data:image/png;base64,{base64.b64encode(png).decode()})"


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clap_pipeline.evaluation.evaluate", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="print reports/evaluation.json as a table")
    p.add_argument("--data-dir", default=None, help="default: $CLAP_DATA_DIR (or ./data)")
    p = sub.add_parser("run", help="evaluate now (what the `evaluation` asset does)")
    p.add_argument("--data-dir", default=None, help="default: $CLAP_DATA_DIR (or ./data)")
    defaults = EvalConfig()
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--n-bootstrap", type=int, default=defaults.n_bootstrap)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the MLflow run")
    return parser


def _settings(data_dir: str | None) -> Settings:
    settings = Settings.from_env()
    if data_dir is None:
        return settings
    return Settings.build(
        data_dir=data_dir,
        model=settings.model,
        max_tracks=settings.max_tracks,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        mlflow_experiment=settings.mlflow_experiment,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args.data_dir)
        if args.command == "show":
            print(format_evaluation_table(load_report(settings.reports_dir / REPORT_NAME)))
            return 0
        config = EvalConfig(
            batch_size=args.batch_size,
            device=args.device,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            log_to_mlflow=not args.no_mlflow,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-checkpoint load bars are noise here
        report = evaluate(config, EvalInputs.from_settings(settings), log=print)
        print(format_evaluation_table(report))
        return 0
    except (EvaluationError, ConfigError) as exc:
        print(f"evaluation {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
