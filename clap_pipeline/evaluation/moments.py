"""Moment accuracy: does a track's best window for a query fall in the section it names?

On a collection whose tracks join sections of different genres (``sections.py``: e.g. 15 s
of folk then 15 s of electronic), each section is a query, "<genre> music" in the genre
search's wording (``genre_search.GENRE_QUERIES``), asked of its own track's windows: a hit
when the best-scoring window starts inside the section. Chance is the section's share of
the track's windows (a window picked at random). Reported with a bootstrap interval over
the queries, next to chance, for every model the evaluation embeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline.evaluation.inputs import EvalConfig, EvaluationError, SplitClips
from clap_pipeline.evaluation.report import Interval, MomentReport, MomentSplit
from clap_pipeline.genre_search import GENRE_QUERIES
from clap_pipeline.metrics import bootstrap_mean_interval
from clap_pipeline.sections import Section, read_sections
from clap_pipeline.window_embeddings import WindowEmbeddings

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

MOMENT_QUERY = GENRE_QUERIES["genre_music"]
MOMENTS_GROUP = "moment_queries"  # the encoder's text group of the section queries


@dataclass(frozen=True)
class MomentAccuracy:
    queries: int  # sections asked (their tracks have window embeddings)
    accuracy: float  # share whose best window starts inside the section
    ci_low: float
    ci_high: float
    chance: float  # mean share of the track's windows inside the section

    def to_json(self) -> dict[str, float | int]:
        return {
            "queries": self.queries,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "chance": self.chance,
        }


def moment_hits(
    windows: WindowEmbeddings,
    sections: Sequence[Section],
    embed_texts: Callable[[list[str]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(hit, chance) per section of a track in ``windows``: is the best window for the
    section's query inside it, and the share of the track's windows that are."""
    present = set(windows.tracks.tolist())
    asked = [s for s in sections if s.track_id in present]
    if not asked:
        return np.zeros(0, dtype=bool), np.zeros(0)
    genres = sorted({s.genre for s in asked})
    queries = embed_texts([MOMENT_QUERY.format(genre=g) for g in genres])
    by_genre = dict(zip(genres, queries, strict=True))
    hits, chance = [], []
    for s in asked:
        rows = np.flatnonzero(windows.track_ids == s.track_id)
        starts = windows.start_s[rows]
        inside = (starts >= s.start_s) & (starts < s.end_s)
        best = int(np.argmax(windows.embeddings[rows] @ by_genre[s.genre]))
        hits.append(bool(inside[best]))
        chance.append(float(inside.mean()))
    return np.array(hits), np.array(chance)


def moment_accuracy(
    windows: WindowEmbeddings,
    sections: Sequence[Section],
    embed_texts: Callable[[list[str]], np.ndarray],
    *,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> MomentAccuracy | None:
    """Moment accuracy with its bootstrap interval (None: no section has windows)."""
    hits, chance = moment_hits(windows, sections, embed_texts)
    if not len(hits):
        return None
    low, high = bootstrap_mean_interval(
        hits.astype(float), n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    return MomentAccuracy(len(hits), float(hits.mean()), low, high, float(chance.mean()))


# --------------------------------------------------------------------------- in the evaluation


def read_eval_sections(path: Path | None) -> list[Section]:
    """The collection's sections table (none: no moment accuracy); EvaluationError naming
    the file's bad row."""
    if path is None or not path.exists():
        return []
    try:
        return read_sections(path)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def moment_queries(sections: Sequence[Section]) -> dict[str, list[str]]:
    """The text group each model embeds for it: "<genre> music" per genre of a section."""
    genres = sorted({s.genre for s in sections})
    return {MOMENTS_GROUP: [MOMENT_QUERY.format(genre=g) for g in genres]} if genres else {}


def moment_report(
    sections: Sequence[Section],
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    config: EvalConfig,
) -> MomentReport | None:
    """Moment accuracy per split and model over the split's sectioned tracks, next to
    chance (None: no evaluated track has sections)."""
    splits: dict[str, MomentSplit] = {}
    texts = moment_queries(sections).get(MOMENTS_GROUP, [])
    for name, split in clips.items():
        tracks = set(split.track_ids) & {s.track_id for s in sections}
        for model, embeddings in embedded.items():
            if not tracks or name not in embeddings.windows:
                break
            found = moment_accuracy(
                embeddings.windows[name], sections, _known(texts, embeddings.groups[MOMENTS_GROUP]),
                seed=config.seed, n_resamples=config.n_bootstrap, confidence=config.confidence,
            )  # fmt: skip
            if found is None:
                break
            block = splits.setdefault(name, MomentSplit(found.queries, len(tracks), found.chance))
            block.models[model] = Interval(found.accuracy, found.ci_low, found.ci_high)
    return MomentReport(MOMENT_QUERY, splits) if splits else None


def _known(texts: list[str], vectors: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """An encoder of the texts a model embedded beforehand (the model is released)."""
    known = dict(zip(texts, vectors, strict=True))
    return lambda asked: np.stack([known[t] for t in asked])
