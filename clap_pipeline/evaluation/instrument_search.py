"""Instrument search: what a person typing "piano music" sees in the results.

The sibling of ``genre_search`` for what a clip *plays*. A clip's instruments are the tags
of its track (the ``tags`` column of ``tracks``, as the prompts carry them) that name an
instrument (``INSTRUMENT_VOCABULARY``, a general list, matched case-insensitively as
whole tags). Each instrument with at least ``MIN_INSTRUMENT_TRACKS`` clips in a split is a
query (``"<instrument> music"``); every clip of the split is a candidate, the clips whose
tags name the instrument are the relevant ones (a clip plays several instruments, so one
clip can be relevant to several queries). Scores as in ``genre_search``: precision@10 and
average precision, macro-averaged over instruments, pessimistic ties, a percentile
bootstrap over the split's clips, and a random ranking as the prior (expected
precision@10 = the instrument's share of the split).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline.evaluation.inputs import MODELS, EvalConfig, SplitClips
from clap_pipeline.evaluation.report import (
    GenreSearchPrior,
    GenreSearchReport,
    GenreSearchScores,
    GenreSearchSplit,
)
from clap_pipeline.genre_search import (
    SCORE_NAMES,
    GenreSearchConfig,
    _stat,
    precision_and_ap,
)
from clap_pipeline.selection import read_track_values

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

MIN_INSTRUMENT_TRACKS = 5
INSTRUMENT_QUERY = "{instrument} music"
INSTRUMENT_QUERIES = {"instrument_music": INSTRUMENT_QUERY}
# Tags that name an instrument (a general list: FMA's own tags use these words too).
INSTRUMENT_VOCABULARY = frozenset(
    (
        "piano",
        "electric piano",
        "keyboard",
        "organ",
        "harpsichord",
        "guitar",
        "acoustic guitar",
        "electric guitar",
        "distorted guitar",
        "nylon guitar",
        "bass",
        "bass guitar",
        "upright bass",
        "double bass",
        "synth bass",
        "drums",
        "drum machine",
        "percussion",
        "strings",
        "violin",
        "fiddle",
        "viola",
        "cello",
        "harp",
        "banjo",
        "mandolin",
        "ukulele",
        "flute",
        "clarinet",
        "oboe",
        "saxophone",
        "trumpet",
        "trombone",
        "horn",
        "harmonica",
        "accordion",
        "vibraphone",
        "marimba",
        "xylophone",
        "bells",
        "choir",
        "synth",
        "synthesizer",
        "synth pad",
        "synth lead",
    )
)


def clip_instruments(tags: Iterable[object] | None) -> frozenset[str]:
    """The instruments a track's tags name (lower-cased whole tags in the vocabulary)."""
    return frozenset(
        t for t in (str(tag).strip().lower() for tag in tags or ()) if t in INSTRUMENT_VOCABULARY
    )


def eligible_instruments(
    labels: Sequence[frozenset[str]], min_tracks: int = MIN_INSTRUMENT_TRACKS
) -> list[str]:
    """Instruments named by at least ``min_tracks`` clips, sorted."""
    counts: dict[str, int] = {}
    for names in labels:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return sorted(i for i, c in counts.items() if c >= min_tracks)


def relevance(labels: Sequence[frozenset[str]], instruments: Sequence[str]) -> np.ndarray:
    """(I, N) booleans: clip n's tags name instrument i."""
    return np.array([[i in names for names in labels] for i in instruments], dtype=bool).reshape(
        len(instruments), len(labels)
    )


def instrument_queries(instruments: Sequence[str]) -> list[str]:
    return [INSTRUMENT_QUERY.format(instrument=i) for i in instruments]


def _macro(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """(2, I) precision@k and AP per instrument; NaN where no clip is relevant."""
    out = np.full((2, len(relevant)), np.nan)
    for i in range(len(relevant)):
        if relevant[i].any():
            out[:, i] = precision_and_ap(scores[i], relevant[i], k)
    return out


def _mean_present(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else float("nan")


def model_instrument_search(
    query_embeddings: np.ndarray,
    audio_embeddings: np.ndarray,
    labels: Sequence[frozenset[str]],
    instruments: Sequence[str],
    config: GenreSearchConfig,
) -> dict[str, object]:
    """Macro precision@k and mAP (bootstrap intervals) and the per-instrument values.

    ``query_embeddings`` (I, d): one query per instrument in ``instruments`` order;
    ``audio_embeddings`` (N, d): the split's clips with their instrument ``labels``.
    """
    relevant = relevance(labels, instruments)
    scores = np.asarray(query_embeddings, np.float64) @ np.asarray(audio_embeddings, np.float64).T
    per = _macro(scores, relevant, config.k)
    rng = np.random.default_rng([config.seed, 13])
    n = relevant.shape[1]
    boot = np.empty((2, config.n_bootstrap))
    for b in range(config.n_bootstrap):
        pick = rng.integers(0, n, n)
        sample = _macro(scores[:, pick], relevant[:, pick], config.k)
        boot[:, b] = _mean_present(sample[0]), _mean_present(sample[1])
    name_p, name_ap = SCORE_NAMES
    return {
        name_p: _stat(_mean_present(per[0]), boot[0], config.confidence),
        name_ap: _stat(_mean_present(per[1]), boot[1], config.confidence),
        "per_instrument": {
            inst: {name_p: float(per[0, i]), name_ap: float(per[1, i])}
            for i, inst in enumerate(instruments)
        },
    }


def prior_instrument_search(
    labels: Sequence[frozenset[str]], instruments: Sequence[str], config: GenreSearchConfig
) -> dict[str, object]:
    """The prior: random rankings of the split (seeded); precision@k's value is exact."""
    relevant = relevance(labels, instruments)
    n = relevant.shape[1]
    rng = np.random.default_rng([config.seed, 14])
    rounds = np.empty((2, config.random_rounds))
    for r in range(config.random_rounds):
        scores = np.broadcast_to(rng.permutation(n).astype(np.float64), relevant.shape)
        sample = _macro(scores, relevant, config.k)
        rounds[:, r] = sample[0].mean(), sample[1].mean()
    shares = relevant.mean(axis=1)
    name_p, name_ap = SCORE_NAMES
    return {
        name_p: _stat(float(shares.mean()), rounds[0], config.confidence),
        name_ap: _stat(float(rounds[1].mean()), rounds[1], config.confidence),
        "shares": {inst: float(s) for inst, s in zip(instruments, shares, strict=True)},
    }


# --------------------------------------------------------------------------- in the report


def read_instruments(duckdb_path: Path, track_ids: Sequence[int]) -> dict[int, frozenset[str]]:
    """The instruments named by the tags of the given tracks (DuckDB ``tracks``, read-only).

    A ``tracks`` table without FMA's ``track_tags`` column (one made by hand) names none:
    the report then has no instrument search, as a collection without instrument tags.
    """
    tags = read_track_values(duckdb_path, track_ids, "track_tags", required=False)
    return {t: clip_instruments(value) for t, value in tags.items()}


@dataclass(frozen=True)
class InstrumentPlan:
    """Which instruments each split queries, known before any model runs (tags only)."""

    instruments_of: dict[int, frozenset[str]]
    searchable: dict[str, list[str]]  # split -> instruments with enough clips

    @classmethod
    def build(
        cls, clips: Mapping[str, SplitClips], instruments_of: dict[int, frozenset[str]]
    ) -> InstrumentPlan:
        return cls(
            instruments_of=instruments_of,
            searchable={
                name: eligible_instruments(
                    [instruments_of.get(t, frozenset()) for t in split.track_ids]
                )
                for name, split in clips.items()
            },
        )

    def text_groups(self) -> dict[str, list[str]]:
        return {
            _group(split): instrument_queries(names)
            for split, names in self.searchable.items()
            if names
        }


def _group(split: str) -> str:
    return f"instrument search {split}"


def instrument_search_report(
    plan: InstrumentPlan,
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    config: EvalConfig,
) -> GenreSearchReport:
    """Instrument search per split and model, in the genre search's report shape."""
    search_config = GenreSearchConfig(
        n_bootstrap=config.n_bootstrap,
        random_rounds=config.random_rounds,
        confidence=config.confidence,
        seed=config.seed,
    )
    report = GenreSearchReport(
        queries=dict(INSTRUMENT_QUERIES),
        k=search_config.k,
        min_tracks=MIN_INSTRUMENT_TRACKS,
        splits={},
    )
    for name, split in clips.items():
        labels = [plan.instruments_of.get(t, frozenset()) for t in split.track_ids]
        names = plan.searchable[name]
        prior = (
            GenreSearchPrior.from_json(prior_instrument_search(labels, names, search_config))
            if names
            else None
        )
        block = report.splits[name] = GenreSearchSplit(len(split.track_ids), names, prior)
        if not names:
            continue
        for model_key in MODELS:
            scores = model_instrument_search(
                embedded[model_key].groups[_group(name)],
                embedded[model_key].audio[name],
                labels,
                names,
                search_config,
            )
            scores["per_genre"] = scores.pop("per_instrument")  # the report's field name
            block.models[model_key] = {"instrument_music": GenreSearchScores.from_json(scores)}
    return report
