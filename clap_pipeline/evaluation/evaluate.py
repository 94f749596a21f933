"""Evaluate the zero-shot and the fine-tuned CLAP: retrieval with intervals, genres, examples.

No Dagster here: the `evaluation` asset is a thin wrapper, and the same code runs
standalone on a GPU host::

    clap-pipeline evaluate run    # evaluate, log to MLflow, write JSON (= python -m clap_pipeline.evaluation run)
    clap-pipeline evaluate show   # print reports/evaluation.json

``evaluate`` embeds each model once (``encoder``), then computes its parts from those
embeddings: retrieval per split next to random (``retrieval``), genre classification
and genre search (``genres``), instrument search (``instrument_search``), audio->audio
genre precision with and without the query's artist (``similarity``), and top-1
examples over a sample of the epochs (``qualitative``). The result is an ``EvaluationReport`` (``report``), written
atomically to ``reports/evaluation.json`` and logged to the training's MLflow run
(``mlflow_log``: names ``eval_<split>_...``); ``render`` turns it into tables, a
verdict and a chart, ``checks`` into the asset checks' verdicts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from clap_pipeline.dataset import Prompts, TrainingDataError
from clap_pipeline.evaluation.genres import GenrePlan, genre_classification, genre_search_report
from clap_pipeline.evaluation.inputs import (
    SPLITS,
    EvalConfig,
    EvalInputs,
    EvaluationError,
    SplitClips,
    load_manifest,
    model_sources,
    split_clips,
)
from clap_pipeline.evaluation.instrument_search import (
    InstrumentPlan,
    instrument_search_report,
    read_instruments,
)
from clap_pipeline.evaluation.mlflow_log import check_mlflow_run, log_artifacts, log_metrics
from clap_pipeline.evaluation.moments import moment_queries, moment_report, read_eval_sections
from clap_pipeline.evaluation.qualitative import evaluate_qualitative
from clap_pipeline.evaluation.report import EvaluationReport
from clap_pipeline.evaluation.retrieval import evaluate_retrieval
from clap_pipeline.evaluation.similarity import similarity_report
from clap_pipeline.evaluation.whole_track import whole_track_report
from clap_pipeline.metrics import MAP_CUTOFF, MAP_NAME, MEAN_RANK, MEDIAN_RANK
from clap_pipeline.reporting import Log
from clap_pipeline.selection import read_genres, read_track_values
from clap_pipeline.waveform_reader import WaveformIndex
from clap_pipeline.window_embeddings import write_search_rule

if TYPE_CHECKING:
    import torch

    from clap_pipeline.evaluation.encoder import Embedded


def conventions(config: EvalConfig) -> dict[str, str]:
    """How every number of the report is computed, stored with it."""
    return {
        "rank": "0-based position of the match among N candidates, scores descending",
        "ties": "pessimistic: every other candidate scoring >= the match ranks above it",
        MEDIAN_RANK: "floor(median(rank)) + 1",
        MEAN_RANK: "mean(rank) + 1",
        MAP_NAME: f"mean(1/(rank+1) if rank < {MAP_CUTOFF} else 0)",
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
    }


def evaluate(config: EvalConfig, inputs: EvalInputs, *, log: Log | None = None) -> EvaluationReport:
    """Evaluate both models, write ``evaluation.json`` atomically, log to MLflow; return it."""
    # torch loads here, not at import: `show` and the Dagster definitions stay fast.
    from clap_pipeline.model.clap import pick_device

    config.validate()
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    manifest = load_manifest(inputs.manifest_path)
    if config.log_to_mlflow:  # fail before the expensive part
        check_mlflow_run(inputs.tracking_uri, manifest.mlflow_run_id)
    try:
        prompts = Prompts.load(inputs.prompts_path)
        index = WaveformIndex.build(inputs.waveforms_dir)
    except TrainingDataError as exc:
        raise EvaluationError(str(exc)) from exc
    names = SPLITS if config.include_validation else ("test",)
    clips = {name: split_clips(name, manifest.split(name), prompts, index) for name in names}
    _say_missing(clips, say)
    device = pick_device(config.device)
    say(
        f"evaluating on {device}: "
        + ", ".join(f"{s.name} {len(s.track_ids)} clips" for s in clips.values())
    )
    genre_of = read_genres(inputs.duckdb_path, [t for s in clips.values() for t in s.track_ids])
    plan = GenrePlan.build(clips, genre_of)
    evaluated_ids = [t for s in clips.values() for t in s.track_ids]
    artist_of = read_track_values(inputs.duckdb_path, evaluated_ids, "artist_id", required=False)
    instruments = InstrumentPlan.build(clips, read_instruments(inputs.duckdb_path, evaluated_ids))
    sections = read_eval_sections(inputs.sections_path)
    sources = model_sources(manifest)
    groups = {**plan.text_groups(), **instruments.text_groups(), **moment_queries(sections)}
    embedded = _embed_models(sources, clips, inputs, groups, device, config, log)

    report = EvaluationReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mlflow_run_id=manifest.mlflow_run_id,
        model_source=sources["zero_shot"],
        best_checkpoint=sources["fine_tuned"],
        best_epoch=manifest.best_epoch,
        device=str(device),
        config=config,
        conventions=conventions(config),
        splits=evaluate_retrieval(clips, embedded, config, say),
        genre=genre_classification(plan, clips, embedded, config),
        genre_search=genre_search_report(plan, clips, embedded, config),
        wise_ft_alpha=manifest.wise_ft.alpha if manifest.wise_ft else None,
        qualitative=evaluate_qualitative(manifest, clips, embedded, index, device, config, say),
        seconds=0.0,
        instrument_search=instrument_search_report(instruments, clips, embedded, config),
        whole_track=whole_track_report(clips, embedded, plan, instruments, config),
        similarity=similarity_report(clips, embedded, genre_of, artist_of, config),
        moments=moment_report(sections, clips, embedded, config),
    )
    report.seconds = round(time.perf_counter() - started, 2)
    _publish(report, config, inputs, say)
    return report


def _say_missing(clips: dict[str, SplitClips], say: Log) -> None:
    for split in clips.values():
        if split.missing:
            say(
                f"{split.name}: {len(split.missing)} of {split.expected} clips have no prompt or "
                f"waveform (first: {split.missing[:5]}); evaluating the other {len(split.track_ids)}"
            )


def _embed_models(
    sources: dict[str, str],
    clips: dict[str, SplitClips],
    inputs: EvalInputs,
    text_groups: Mapping[str, Sequence[str]],
    device: torch.device,
    config: EvalConfig,
    log: Log | None,
) -> dict[str, Embedded]:
    """Each model's embeddings of ``clips`` and ``text_groups``, each source embedded once."""
    from clap_pipeline.evaluation.encoder import embed_model

    say = log or (lambda _msg: None)
    embedded: dict[str, Embedded] = {}
    for model_key, source in sources.items():
        same = next((k for k in embedded if sources[k] == source), None)
        if same:  # WiSE-FT kept alpha = 1: the fine-tuned weights themselves
            embedded[model_key] = embedded[same]
            continue
        say(f"{model_key}: loading {source}")
        embedded[model_key] = embed_model(
            sources[model_key], model_key, clips,
            (inputs.waveforms_dir, inputs.window_embeddings_dir),
            text_groups, device, config.batch_size, log,
        )  # fmt: skip
    return embedded


def _publish(report: EvaluationReport, config: EvalConfig, inputs: EvalInputs, say: Log) -> None:
    """The search rule, MLflow metrics, ``evaluation.json`` and MLflow artifacts, in that order."""
    if report.whole_track is not None:
        whole = report.whole_track
        write_search_rule(inputs.report_path.parent, whole.chosen, whole.chosen_by)
    if config.log_to_mlflow:
        report.mlflow = log_metrics(report, inputs.tracking_uri)
        say(f"logged {len(report.mlflow.metrics)} metrics to MLflow run {report.mlflow_run_id}")
    report.write(inputs.report_path)
    if config.log_to_mlflow:
        log_artifacts(report, inputs.report_path, inputs.tracking_uri)
    say(f"evaluation written to {inputs.report_path} in {report.seconds:.1f} s")
