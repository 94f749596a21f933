"""Does a model rank the tracks listeners liked higher? Scored on the held-out feedback.

The held-out part of ``search_feedback`` (feedback.py: a stable fifth of the (query,
track) pairs, never used for training) is replayed against each model:

- the *pool* is every track that has a held-out verdict (and decoded audio); each model
  embeds the pool's clips and the held-out queries;
- **pairwise accuracy**: over (query, liked track, disliked track) triples of the same
  query, the share where the liked track scores higher;
- **liked mean rank**: the mean rank (1 = first) of each liked track among the pool for
  its query.

``evaluate_feedback`` compares the newly trained version with the version that served the
feedback (the most frequent ``model_version`` of the held-out rows): the model listeners
judged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from clap_pipeline import run_names, tracking
from clap_pipeline.config import Settings
from clap_pipeline.dataset import WaveformRows
from clap_pipeline.evaluation.inputs import EvaluationError, load_manifest
from clap_pipeline.feedback import Feedback, feedback_sets
from clap_pipeline.model.choice import ModelChoiceError, resolve_model
from clap_pipeline.reporting import Log, Markdown, warn
from clap_pipeline.storage import write_text_atomic
from clap_pipeline.tables import markdown_table

REPORT_NAME = "feedback_evaluation.json"
SCORE_HEADERS = [
    "model", "version", "queries", "liked", "disliked", "pairs", "pairwise acc.",
    "liked mean rank",
]  # fmt: skip


@dataclass(frozen=True)
class HeldoutScore:
    label: str
    model_version: str | None
    queries: int
    liked: int
    disliked: int
    pairs: int
    pairwise_accuracy: float | None
    liked_mean_rank: float | None
    pool: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def served_version(heldout: Sequence[Feedback]) -> str | None:
    """The model version that ranked most of the held-out rows (None without any)."""
    versions = Counter(r.model_version for r in heldout if r.model_version)
    return versions.most_common(1)[0][0] if versions else None


def pool_waveforms(waveforms_dir: Path, track_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, waveforms (n, CLIP_SAMPLES)) of the given tracks found in the waveforms dataset."""
    dataset = ds.dataset(waveforms_dir, format="parquet")
    table = dataset.to_table(
        columns=["track_id", "input_values"],
        filter=pc.field("track_id").isin(list(track_ids)),
    ).sort_by("track_id")
    ids = table.column("track_id").to_numpy().astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, WaveformRows(table, waveforms_dir).clips()  # writable for torch


def score_rankings(
    label: str,
    model_version: str | None,
    heldout: Sequence[Feedback],
    pool_ids: np.ndarray,
    scores: Callable[[list[str]], np.ndarray],
) -> HeldoutScore:
    """Pairwise accuracy and liked mean rank from ``scores(queries)`` -> (q, len(pool)) array."""
    position = {int(t): i for i, t in enumerate(pool_ids.tolist())}
    by_query: dict[str, tuple[list[int], list[int]]] = {}
    for row in heldout:
        if row.track_id in position:
            liked, disliked = by_query.setdefault(row.query, ([], []))
            (liked if row.relevant else disliked).append(position[row.track_id])
    queries = sorted(by_query)
    matrix = scores(queries) if queries else np.zeros((0, len(pool_ids)))
    correct = pairs = 0
    ranks: list[int] = []
    for q, row_scores in zip(queries, matrix, strict=True):
        liked, disliked = by_query[q]
        for i in liked:
            ranks.append(1 + int(np.sum(row_scores > row_scores[i])))
            for j in disliked:
                pairs += 1
                correct += int(row_scores[i] > row_scores[j])
    return HeldoutScore(
        label=label,
        model_version=model_version,
        queries=len(queries),
        liked=sum(len(v[0]) for v in by_query.values()),
        disliked=sum(len(v[1]) for v in by_query.values()),
        pairs=pairs,
        pairwise_accuracy=correct / pairs if pairs else None,
        liked_mean_rank=float(np.mean(ranks)) if ranks else None,
        pool=len(pool_ids),
    )


def model_scorer(model_dir: str | Path, waves: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """Cosine scores of queries against the pool's clips with the model in ``model_dir``."""
    import torch

    from clap_pipeline.model.clap import clip_embeddings, load_clap, text_embeddings, tokenize
    from clap_pipeline.model.features import features_for_model

    clap = load_clap(model_dir)
    model = clap.model.eval()
    device = torch.device("cpu")
    features = features_for_model(clap, device, seed=0)
    with torch.inference_mode():
        audio = np.concatenate(
            [
                clip_embeddings(model, features, waves[i : i + 16], device)
                for i in range(0, len(waves), 16)
            ]
        )

    def scores(queries: list[str]) -> np.ndarray:
        with torch.inference_mode():
            text = text_embeddings(model, tokenize(clap.tokenizer, queries)).float().numpy()
        return text @ audio.T

    return scores


def evaluate_feedback(
    heldout: Sequence[Feedback],
    waveforms_dir: Path,
    models: Sequence[tuple[str, str | None, str | Path]],
) -> list[HeldoutScore]:
    """One score per (label, version, model folder), all on the same pool and queries."""
    pool_ids, waves = pool_waveforms(waveforms_dir, sorted({r.track_id for r in heldout}))
    results = []
    for label, version, model_dir in models:
        scorer = model_scorer(model_dir, waves) if len(pool_ids) else (lambda q: np.zeros((0, 0)))
        results.append(score_rankings(label, version, heldout, pool_ids, scorer))
    return results


def verdict(new: HeldoutScore, served: HeldoutScore | None) -> str:
    if new.pairwise_accuracy is None and new.liked_mean_rank is None:
        return "no held-out feedback on decoded tracks yet"
    if served is None:
        return "no served model to compare with (the feedback's model version is not registered)"
    a, b = new.liked_mean_rank, served.liked_mean_rank
    p, q = new.pairwise_accuracy, served.pairwise_accuracy
    if p is not None and q is not None and p != q:
        return (
            f"version {new.model_version} ranks liked above disliked tracks "
            f"{'more' if p > q else 'less'} often than version {served.model_version} "
            f"({p:.3f} vs {q:.3f}, {new.pairs} pairs)"
        )
    if a is not None and b is not None and a != b:
        return (
            f"version {new.model_version} ranks liked tracks {'higher' if a < b else 'lower'} "
            f"than version {served.model_version} (mean rank {a:.2f} vs {b:.2f})"
        )
    return f"version {new.model_version} and version {served.model_version} rank liked tracks alike"


def _models(
    settings: Settings, heldout: Sequence[Feedback], log: Log
) -> list[tuple[str, str, str]]:
    """(label, version, folder): the newly trained version, and the served one when it loads."""
    manifest = load_manifest(settings.training_manifest_path)
    if manifest.registered_model is None:
        raise EvaluationError(f"{settings.training_manifest_path} names no registered model")
    new_version = manifest.registered_model.version
    models = [("new", new_version, str(manifest.best_checkpoint))]
    served = served_version(heldout)
    if served is not None and served != new_version:
        try:
            model = resolve_model(
                f"models:/{settings.registered_model}/{served}",
                settings.mlflow_tracking_uri,
                settings.registered_model,
            )
            models.append(("served", served, model.source))
        except ModelChoiceError as exc:
            warn(log, f"cannot load the served version {served}: {exc}")
    return models


def _log_scores(settings: Settings, scores: Sequence[HeldoutScore]) -> None:
    """``feedback_heldout_*`` metrics (``_served`` for the served version) on the training run."""
    run_id = load_manifest(settings.training_manifest_path).mlflow_run_id
    client = tracking.client(settings.mlflow_tracking_uri)
    for score, served in zip(scores, (False, True), strict=False):
        for key in run_names.FEEDBACK_SCORES:
            value = getattr(score, key)
            if value is not None:
                client.log_metric(run_id, run_names.feedback_metric(key, served), float(value))


def run_feedback_evaluation(settings: Settings, log: Log) -> dict[str, object]:
    """The `feedback_evaluation` asset: score, write the JSON report, log MLflow metrics.

    Returns the materialization metadata.
    """
    heldout = feedback_sets(settings.duckdb_path).heldout
    models = _models(settings, heldout, log)
    scores = evaluate_feedback(heldout, settings.waveforms_dir, models) if heldout else []
    new = scores[0] if scores else None
    old = scores[1] if len(scores) > 1 else None
    summary = verdict(new, old) if new else "no held-out feedback yet"
    report = {"verdict": summary, "scores": [s.as_dict() for s in scores]}
    path = write_text_atomic(settings.reports_dir / REPORT_NAME, json.dumps(report, indent=1))
    if scores:
        _log_scores(settings, scores)
    rows = [
        [
            s.label, s.model_version, s.queries, s.liked, s.disliked, s.pairs,
            "–" if s.pairwise_accuracy is None else f"{s.pairwise_accuracy:.3f}",
            "–" if s.liked_mean_rank is None else f"{s.liked_mean_rank:.2f} of {s.pool}",
        ]
        for s in scores
    ]  # fmt: skip
    return {
        "verdict": summary,
        "heldout_rows": len(heldout),
        "scores": Markdown(markdown_table(SCORE_HEADERS, rows) if rows else summary),
        "report": Path(path),
    }
