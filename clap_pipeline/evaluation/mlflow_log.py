"""The evaluation's metrics and files on the training's MLflow run.

Metric names (one scheme, no clash with training's per-epoch ``val_*`` history)::

    eval_<split>_<direction>_<metric>            fine-tuned, e.g. eval_test_text_to_audio_recall_at_5
    eval_<split>_<direction>_<metric>_ci_low     its bootstrap interval (and _ci_high)
    eval_zeroshot_<split>_<direction>_<metric>   the pre-trained model
    eval_wiseft_<split>_<direction>_<metric>     WiSE-FT's interpolation (when training kept one)
    eval_random_<split>_<direction>_<metric>     random ranking (exact: k/N, expected ranks)
    eval_<split>_n                               clips evaluated
    eval_[zeroshot_]<split>_genre_accuracy       zero-shot genre classification
    eval_[zeroshot_|wiseft_|prior_]<split>_genre_search_<query>_<score>   genre search
    eval_[zeroshot_|wiseft_|prior_]<split>_audio_to_audio_genre_precision_at_10[_other_artists]
                                                 "more like this" (similarity.py)
    eval_[zeroshot_|wiseft_]<split>_track_<rule>_text_to_audio_recall_at_<k>
    eval_[zeroshot_|wiseft_]<split>_track_<rule>_{genre,instrument}_search_precision_at_10
                                                 whole tracks (whole_track.py), rule first/mean/max
    eval_[zeroshot_|wiseft_|chance_]<split>_moment_accuracy[_ci_low|_ci_high]
                                                 best window inside the named section (moments.py)

``<split>`` uses training's names: ``val`` and ``test``; ``<direction>`` is
``text_to_audio`` or ``audio_to_text``; ``<metric>`` one of ``metrics.METRIC_NAMES``
(the scheme is ``run_names.eval_metric``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from clap_pipeline import genre_search, tracking
from clap_pipeline.evaluation.inputs import WISE_FT, EvaluationError
from clap_pipeline.evaluation.render import CHART_NAME, comparison_chart_png
from clap_pipeline.evaluation.report import EvaluationReport, MlflowLogged
from clap_pipeline.metrics import DIRECTIONS, KS, METRIC_NAMES, metric_key, recall_key
from clap_pipeline.run_names import EVALUATION_ARTIFACT, eval_metric

# report model -> name part
MLFLOW_MODEL_PREFIX = {"fine_tuned": "", "zero_shot": "zeroshot", WISE_FT: "wiseft"}
MOMENT_ACCURACY = "moment_accuracy"


def mlflow_metrics(report: EvaluationReport) -> dict[str, float]:
    """The flat metric names logged on the training run (scheme in the module docstring)."""
    out: dict[str, float] = {}
    for split, block in report.splits.items():
        if not block.n:
            continue
        out[eval_metric(split, "n")] = float(block.n)
        tuned, zero = block.models["fine_tuned"], block.models["zero_shot"]
        for direction in DIRECTIONS:
            for name in METRIC_NAMES:
                key = metric_key(direction, name)
                stat = tuned.metrics[key]
                out[eval_metric(split, key)] = stat.value
                out[eval_metric(split, f"{key}_ci_low")] = stat.ci_low
                out[eval_metric(split, f"{key}_ci_high")] = stat.ci_high
                out[eval_metric(split, key, "zeroshot")] = zero.metrics[key].value
                out[eval_metric(split, key, "random")] = block.random.exact[key]
                if WISE_FT in block.models:
                    wise = block.models[WISE_FT].metrics[key].value
                    out[eval_metric(split, key, MLFLOW_MODEL_PREFIX[WISE_FT])] = wise
        search = report.genre_search.splits.get(split)
        if search is not None and search.prior is not None:
            for model_key, results in search.models.items():
                model = MLFLOW_MODEL_PREFIX[model_key]
                for query_name, result in results.items():
                    for score in genre_search.SCORE_NAMES:
                        key = f"genre_search_{query_name}_{score}"
                        out[eval_metric(split, key, model)] = result.scores[score].value
            for score in genre_search.SCORE_NAMES:
                key = f"genre_search_{score}"
                out[eval_metric(split, key, "prior")] = search.prior.scores[score].value
        out.update(similarity_metrics(report, split))
        out.update(whole_track_metrics(report, split))
        out.update(moment_metrics(report, split))
        genre = report.genre.splits.get(split)
        if genre is not None and "fine_tuned" in genre.models:
            out[eval_metric(split, "genre_accuracy")] = genre.models["fine_tuned"].accuracy
            out[eval_metric(split, "genre_accuracy", "zeroshot")] = genre.models[
                "zero_shot"
            ].accuracy
    return out


def whole_track_metrics(report: EvaluationReport, split: str) -> dict[str, float]:
    """``track_<rule>_text_to_audio_recall_at_<k>`` and ``track_<rule>_genre_search_...``
    per model (a track scored from its windows, ``whole_track.py``)."""
    block = report.whole_track.splits.get(split) if report.whole_track else None
    if block is None:
        return {}
    out = {}
    for model_key, rules in block.retrieval.items():
        model = MLFLOW_MODEL_PREFIX[model_key]
        for rule, metrics in rules.items():
            for k in KS:
                key = recall_key(k)
                out[eval_metric(split, f"track_{rule}_{key}", model)] = metrics[key].value
            for part in ("genre_search", "instrument_search"):
                stat = getattr(block, part).get(model_key, {}).get(rule)
                if stat is not None:
                    name = f"track_{rule}_{part}_{genre_search.PRECISION_NAME}"
                    out[eval_metric(split, name, model)] = stat.value
    return out


def moment_metrics(report: EvaluationReport, split: str) -> dict[str, float]:
    """``moment_accuracy`` (with ``_ci_low``/``_ci_high``) per model, and chance."""
    block = report.moments.splits.get(split) if report.moments else None
    if block is None:
        return {}
    out = {eval_metric(split, MOMENT_ACCURACY, "chance"): block.chance}
    for model_key, stat in block.models.items():
        model = MLFLOW_MODEL_PREFIX[model_key]
        out[eval_metric(split, MOMENT_ACCURACY, model)] = stat.value
        out[eval_metric(split, f"{MOMENT_ACCURACY}_ci_low", model)] = stat.ci_low
        out[eval_metric(split, f"{MOMENT_ACCURACY}_ci_high", model)] = stat.ci_high
    return out


def similarity_metrics(report: EvaluationReport, split: str) -> dict[str, float]:
    """``audio_to_audio_genre_precision_at_<k>`` (``_other_artists``) per model and the prior."""
    block = report.similarity.splits.get(split) if report.similarity else None
    if block is None:
        return {}
    out = {}
    for kind, prior in block.prior.items():
        key = f"audio_to_audio_genre_precision_at_{report.similarity.k}" + (
            "" if kind == "all" else f"_{kind}"
        )
        out[eval_metric(split, key, "prior")] = prior
        for model_key, scores in block.models.items():
            out[eval_metric(split, key, MLFLOW_MODEL_PREFIX[model_key])] = scores[kind].value
    return out


def check_mlflow_run(tracking_uri: str, run_id: str):
    """The MLflow client, once the training run is known to exist in the store."""
    from mlflow.exceptions import MlflowException  # mlflow loads lazily (start-up time)

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


def log_metrics(report: EvaluationReport, tracking_uri: str) -> MlflowLogged:
    """Every metric of ``mlflow_metrics`` and the tag ``evaluation_created_at`` on the run."""
    from mlflow.entities import Metric

    run_id = report.mlflow_run_id
    client = check_mlflow_run(tracking_uri, run_id)
    metrics = mlflow_metrics(report)
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())]
    for start in range(0, len(batch), 500):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=batch[start : start + 500])
    client.set_tag(run_id, "evaluation_created_at", report.created_at)
    return MlflowLogged(run_id=run_id, tracking_uri=tracking_uri, metrics=sorted(metrics))


def log_artifacts(report: EvaluationReport, report_path: Path, tracking_uri: str) -> None:
    """``evaluation.json`` and the chart under ``evaluation/`` in the run's artifacts."""
    client = tracking.client(tracking_uri)
    run_id = report.mlflow_run_id
    client.log_artifact(run_id, str(report_path), artifact_path=EVALUATION_ARTIFACT)
    if report.evaluated("test"):
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / CHART_NAME
            png.write_bytes(comparison_chart_png(report))
            client.log_artifact(run_id, str(png), artifact_path=EVALUATION_ARTIFACT)
