"""Genres of the evaluated clips: zero-shot classification and genre search, per split.

Classification: each clip's genre is the best-scoring ``GENRE_PROMPT`` over the genres
present in the evaluated splits (accuracy with a bootstrap interval, confusion matrix,
chance and majority baselines). Search: ``clap_pipeline.genre_search`` per
split, each query template against the genre prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline import genre_search
from clap_pipeline.evaluation.inputs import EvalConfig, SplitClips
from clap_pipeline.evaluation.report import (
    GenreAccuracy,
    GenreClassification,
    GenreSearchPrior,
    GenreSearchReport,
    GenreSearchScores,
    GenreSearchSplit,
    GenreSplit,
)
from clap_pipeline.metrics import bootstrap_mean_interval

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

GENRE_PROMPT = "This audio is a {genre} song."
TIE_RULE = "argmax: ties go to the first genre in alphabetical order"
GENRE_PROMPTS_GROUP = "genre prompts"


@dataclass(frozen=True)
class GenrePlan:
    """Which genres each part uses, known before any model runs (only labels needed)."""

    genre_of: dict[int, str | None]
    genres: list[str]  # classification label set: genres present in the evaluated splits
    searchable: dict[str, list[str]]  # split -> genres with enough clips to be queried

    @classmethod
    def build(cls, clips: Mapping[str, SplitClips], genre_of: dict[int, str | None]) -> GenrePlan:
        return cls(
            genre_of=genre_of,
            genres=sorted({g for g in genre_of.values() if g}),
            searchable={
                name: genre_search.eligible_genres([genre_of.get(t) for t in split.track_ids])
                for name, split in clips.items()
            },
        )

    def text_groups(self) -> dict[str, list[str]]:
        """The texts each model embeds besides the prompts: genre prompts, search queries."""
        groups = {}
        if self.genres:
            groups[GENRE_PROMPTS_GROUP] = [GENRE_PROMPT.format(genre=g) for g in self.genres]
        for split, genres in self.searchable.items():
            for query_name, texts in genre_search.genre_queries(genres).items():
                if genres:
                    groups[_search_group(split, query_name)] = texts
        return groups


def _search_group(split: str, query_name: str) -> str:
    return f"genre search {split} {query_name}"


def genre_accuracy(
    audio: np.ndarray, genre_text: np.ndarray, labels: np.ndarray, config: EvalConfig
) -> GenreAccuracy:
    # Ties between genre prompts go to the first genre in alphabetical order (argmax).
    predicted = np.argmax(audio @ genre_text.T, axis=1)
    correct = (predicted == labels).astype(np.float64)
    g = genre_text.shape[0]
    confusion = np.zeros((g, g), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    low, high = bootstrap_mean_interval(
        correct, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )
    return GenreAccuracy(float(correct.mean()), low, high, confusion.tolist())


def genre_classification(
    plan: GenrePlan,
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    config: EvalConfig,
) -> GenreClassification:
    genres = plan.genres
    report = GenreClassification(GENRE_PROMPT, genres, TIE_RULE, splits={})
    for name, split in clips.items():
        labelled = [i for i, t in enumerate(split.track_ids) if plan.genre_of.get(t) in genres]
        labels = np.array(
            [genres.index(plan.genre_of[split.track_ids[i]]) for i in labelled], dtype=np.int64
        )
        counts = np.bincount(labels, minlength=len(genres))
        block = report.splits[name] = GenreSplit(
            n=len(labelled),
            n_without_genre=len(split.track_ids) - len(labelled),
            chance_accuracy=1 / len(genres) if genres else None,
            majority_accuracy=float(counts.max() / len(labelled)) if labelled else None,
            counts=counts.tolist(),
        )
        if not labelled:
            continue
        for model_key, run in embedded.items():
            block.models[model_key] = genre_accuracy(
                run.audio[name][labelled], run.groups[GENRE_PROMPTS_GROUP], labels, config
            )
    return report


def genre_search_report(
    plan: GenrePlan,
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    config: EvalConfig,
) -> GenreSearchReport:
    search_config = genre_search.GenreSearchConfig(
        n_bootstrap=config.n_bootstrap,
        random_rounds=config.random_rounds,
        confidence=config.confidence,
        seed=config.seed,
    )
    report = GenreSearchReport(
        queries=dict(genre_search.GENRE_QUERIES),
        k=search_config.k,
        min_tracks=genre_search.MIN_GENRE_TRACKS,
        splits={},
    )
    for name, split in clips.items():
        labels = [plan.genre_of.get(t) for t in split.track_ids]
        eligible = plan.searchable[name]
        prior = (
            GenreSearchPrior.from_json(
                genre_search.prior_genre_search(labels, eligible, search_config)
            )
            if eligible
            else None
        )
        block = report.splits[name] = GenreSearchSplit(len(split.track_ids), eligible, prior)
        if not eligible:
            continue
        for model_key, run in embedded.items():
            block.models[model_key] = {
                query_name: GenreSearchScores.from_json(
                    genre_search.model_genre_search(
                        run.groups[_search_group(name, query_name)],
                        run.audio[name],
                        labels,
                        eligible,
                        search_config,
                    )
                )
                for query_name in genre_search.GENRE_QUERIES
            }
    return report
