"""Whole tracks: each track scored from all its windows, next to its first window only.

For every split and model, a track's score for a query is an aggregation of its windows'
scores (``window_embeddings.AGGREGATIONS``): ``first`` (the first window only: the number
the rest of the report shows), ``mean`` (the normalised mean of the window embeddings) or
``max`` (the best window). Measured per rule on the same tracks: text->audio and
audio->text retrieval of each track's prompt (R@1/5/10, ranks, mAP@10 with bootstrap
intervals: ``metrics.bootstrap_rank_metrics``), "<genre> music" and "<instrument> music"
precision@10 (macro, with intervals: ``genre_search``, ``instrument_search``).

The rule search uses is chosen by this measurement: the best validation text->audio R@5
of the registered model (WiSE-FT when training interpolated, else the fine-tuned one);
ties go to the cheaper rule to serve (``mean`` and ``first`` keep one vector per track,
``max`` all of them). It is recorded in the report (``WholeTrackReport.chosen``) and, for
search, beside it (``window_embeddings.write_search_rule``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline import genre_search
from clap_pipeline.evaluation.genres import GenrePlan, search_group
from clap_pipeline.evaluation.inputs import WISE_FT, EvalConfig, SplitClips
from clap_pipeline.evaluation.instrument_search import (
    InstrumentPlan,
    instrument_group,
    scored_instrument_search,
)
from clap_pipeline.evaluation.report import Interval, WholeTrackReport, WholeTrackSplit
from clap_pipeline.metrics import SELECTION_METRIC, bootstrap_rank_metrics, match_ranks
from clap_pipeline.window_embeddings import AGGREGATIONS

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

SERVING_COST = ("mean", "first", "max")  # cheapest to serve first: breaks ties
GENRE_QUERY = "genre_music"  # "<genre> music", the query search users type


def _search_config(config: EvalConfig) -> genre_search.GenreSearchConfig:
    return genre_search.GenreSearchConfig(
        n_bootstrap=config.n_bootstrap,
        random_rounds=config.random_rounds,
        confidence=config.confidence,
        seed=config.seed,
    )


def track_retrieval(scores: np.ndarray, config: EvalConfig) -> dict[str, Interval]:
    """Both directions' metrics from an (N prompts, N tracks) score matrix, pair i = (i, i)."""
    ranks = {"text_to_audio": match_ranks(scores), "audio_to_text": match_ranks(scores.T)}
    stats = bootstrap_rank_metrics(
        ranks, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )
    return {key: Interval(**stat) for key, stat in stats.items()}


def _interval(result: dict[str, object]) -> Interval:
    return Interval(**result[genre_search.PRECISION_NAME])  # type: ignore[arg-type]


def split_whole_track(
    split: SplitClips,
    embedded: Mapping[str, Embedded],
    genres: GenrePlan,
    instruments: InstrumentPlan,
    config: EvalConfig,
) -> WholeTrackSplit:
    """Every model and rule on one split's tracks."""
    search = _search_config(config)
    windows_of = {m: run.windows[split.name] for m, run in embedded.items()}
    block = WholeTrackSplit(
        n_tracks=len(split.track_ids), n_windows=len(next(iter(windows_of.values())))
    )
    genre_labels = [genres.genre_of.get(t) for t in split.track_ids]
    searched_genres = genres.searchable[split.name]
    inst_labels = [instruments.instruments_of.get(t, frozenset()) for t in split.track_ids]
    searched_instruments = instruments.searchable[split.name]
    for model, run in embedded.items():
        windows = windows_of[model]
        block.retrieval[model], block.genre_search[model] = {}, {}
        block.instrument_search[model] = {}
        for rule in AGGREGATIONS:
            scores = windows.track_scores(run.text[split.name], rule)
            block.retrieval[model][rule] = track_retrieval(scores, config)
            if searched_genres:
                queries = run.groups[search_group(split.name, GENRE_QUERY)]
                block.genre_search[model][rule] = _interval(
                    genre_search.scored_genre_search(
                        windows.track_scores(queries, rule), genre_labels, searched_genres, search
                    )
                )
            if searched_instruments:
                queries = run.groups[instrument_group(split.name)]
                block.instrument_search[model][rule] = _interval(
                    scored_instrument_search(
                        windows.track_scores(queries, rule),
                        inst_labels,
                        searched_instruments,
                        search,
                    )
                )
    return block


def choose_rule(splits: Mapping[str, WholeTrackSplit], models: list[str]) -> tuple[str, str]:
    """(rule, why): the best validation (else test) text->audio R@5 of the registered model."""
    model = WISE_FT if WISE_FT in models else "fine_tuned"
    split = "validation" if "validation" in splits else next(iter(splits))
    scores = splits[split].retrieval[model]
    best = max(
        SERVING_COST, key=lambda r: (scores[r][SELECTION_METRIC].value, -SERVING_COST.index(r))
    )
    return best, (
        f"best {split} text->audio R@5 of {model} ("
        + ", ".join(f"{r} {scores[r][SELECTION_METRIC].value:.3f}" for r in AGGREGATIONS)
        + "); ties go to the cheaper rule to serve"
    )


def whole_track_report(
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    genres: GenrePlan,
    instruments: InstrumentPlan,
    config: EvalConfig,
) -> WholeTrackReport | None:
    """Every non-empty split; None when no split has tracks."""
    splits = {
        name: split_whole_track(split, embedded, genres, instruments, config)
        for name, split in clips.items()
        if split.track_ids
    }
    if not splits:
        return None
    chosen, why = choose_rule(splits, list(embedded))
    return WholeTrackReport(rules=list(AGGREGATIONS), chosen=chosen, chosen_by=why, splits=splits)
