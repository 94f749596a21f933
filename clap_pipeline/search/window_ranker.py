"""The window index as the engine's audio ranking: catalog rows in, catalog rows and moments out.

``search/engine.py`` ranks rows of its ``Catalog`` (one per track of `track_embeddings`);
``search/window_index.py`` ranks its own track positions. ``WindowRanker`` maps between
the two once per index build, so the engine's filters (a bool per catalog row), its fusion
with BM25 and its results work unchanged, and adds what only windows know: each result's
*moment* (the best window's ``start_s``/``end_s`` and score, and the track's timeline of
window scores) and "more like this" by windows, optionally from one moment of the track.

"More like this" uses the index's rule: ``max`` scores a candidate by its best window
against the best of up to ``SIMILAR_QUERY_WINDOWS`` windows of the track, evenly spread
(tracks that share a moment); ``mean`` and ``first`` by the track's own vector. With
``start_s`` the query is the one window at that time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from clap_pipeline.genre_search import GENRE_QUERIES
from clap_pipeline.reporting import Log
from clap_pipeline.search.window_index import WindowIndex, read_window_index
from clap_pipeline.window_embeddings import WindowEmbeddings, l2_normalise

SIMILAR_QUERY_WINDOWS = 12
MIN_CALIBRATION_TEXTS = 8  # fewer genres: calibrate on noisy windows instead

Ranking = tuple[np.ndarray, np.ndarray]  # catalog row positions, scores; best first


@dataclass(frozen=True)
class Moment:
    """Where in a track a query is heard best, and how well each of its windows matches."""

    start_s: float
    end_s: float
    score: float  # the best window's
    timeline_start_s: list[float]  # every window of the track, in time order
    timeline_scores: list[float]


@dataclass(frozen=True)
class WindowRanker:
    index: WindowIndex
    to_catalog: np.ndarray  # int64 per index position: its catalog row, -1 when not served
    from_catalog: np.ndarray  # int64 per catalog row: its live index position, -1: no windows
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (size, mtime)

    @classmethod
    def build(cls, index: WindowIndex, catalog_track_ids: np.ndarray) -> WindowRanker:
        """``catalog_track_ids`` ascending, as ``Catalog.track_ids`` are."""
        ids = np.asarray(catalog_track_ids, dtype=np.int64)
        where = np.searchsorted(ids, index.track_ids).clip(0, max(len(ids) - 1, 0))
        found = (len(ids) > 0) & (ids[where] == index.track_ids) & index.live_mask
        to_catalog = np.where(found, where, -1).astype(np.int64)
        from_catalog = np.full(len(ids), -1, dtype=np.int64)
        from_catalog[to_catalog[found]] = np.flatnonzero(found)
        return cls(index, to_catalog, from_catalog)

    @property
    def rule(self) -> str:
        return self.index.rule

    def _allowed(self, allowed_rows: np.ndarray | None) -> np.ndarray:
        served = self.to_catalog >= 0
        if allowed_rows is None:
            return served
        return served & allowed_rows[self.to_catalog.clip(0)]

    def rank(self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None) -> Ranking:
        """The best ``k`` catalog rows by the rule among ``allowed_rows`` (bool per row)."""
        return self.rank_many(np.asarray(query, dtype=np.float32)[None], k, allowed_rows)

    def rank_many(
        self, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None = None
    ) -> Ranking:
        """Rows scored by their best score over several queries (e.g. a clip's windows)."""
        allowed = self._allowed(allowed_rows)
        best: dict[int, float] = {}
        for query in queries:
            for m in self.index.search(query, k, allowed):
                row = int(self.to_catalog[m.position])
                best[row] = max(m.score, best.get(row, -np.inf))
        order = sorted(best, key=lambda r: (-best[r], r))[:k]
        return np.array(order, dtype=np.int64), np.array([best[r] for r in order])

    def moment(self, row: int, query: np.ndarray) -> Moment | None:
        """The best window of catalog row ``row`` for ``query`` (None: it has no windows)."""
        position = int(self.from_catalog[row])
        if position < 0:
            return None
        m = self.index.timeline(position, query)
        best = float(m.window_scores.max())
        return Moment(
            m.start_s,
            m.end_s,
            best,
            [float(s) for s in m.window_start_s],
            [round(float(s), 4) for s in m.window_scores],
        )

    def similar_queries(self, row: int, start_s: float | None = None) -> np.ndarray:
        """The query vectors of "more like catalog row ``row``" by the rule (module
        docstring); ``start_s``: the one window at that time."""
        position = int(self.from_catalog[row])
        if position < 0:
            raise KeyError(row)
        starts, vectors = self.index.window_embeddings(position)
        if start_s is not None:
            return vectors[[window_at(starts, start_s, self.index.window_end(position))]]
        if self.rule == "max":
            picks = np.unique(np.linspace(0, len(vectors) - 1, SIMILAR_QUERY_WINDOWS).round())
            return vectors[picks.astype(int)]
        if self.rule == "mean":
            return l2_normalise(vectors.sum(axis=0, keepdims=True))
        return vectors[:1]

    def similar(self, row: int, k: int, start_s: float | None = None) -> Ranking:
        """Rows like catalog row ``row`` by its windows (itself left out); ``start_s``: like
        the window at that time."""
        rows, scores = self.rank_many(self.similar_queries(row, start_s), k + 1)
        keep = rows != row
        return rows[keep][:k], scores[keep][:k]


class MomentNotFoundError(LookupError):
    """No window at that time of the track, or the track has no window embeddings."""


def window_at(starts: np.ndarray, start_s: float, end_s: float) -> int:
    """The window that holds second ``start_s`` of a track (MomentNotFoundError past its
    last one)."""
    if not np.isfinite(start_s) or start_s < 0 or start_s >= end_s:
        raise MomentNotFoundError(
            f"start_s {start_s:g} is outside the track's windows (0 to {end_s:.1f} s)"
        )
    return max(0, int(np.searchsorted(starts, start_s, side="right")) - 1)


def calibration_texts(genres: list[str | None]) -> list[str]:
    """Real queries to calibrate the index's ``nprobe`` on: "<genre> music" for the
    collection's genres (text sits where text sits, not where noisy windows do)."""
    names = sorted({g for g in genres if g})
    return [GENRE_QUERIES["genre_music"].format(genre=g) for g in names]


def build_window_ranker(
    files: list[Path],
    catalog_track_ids: np.ndarray,
    rule: str,
    embed_texts: Callable[[list[str]], np.ndarray],
    genres: list[str | None],
    previous: WindowRanker | None = None,
    log: Log | None = None,
    **options: Any,
) -> WindowRanker:
    """The ranker over window embeddings Parquet ``files`` (one model's store).

    With ``previous`` (built from the same model and rule), only files whose size or
    modification time changed are read, and their tracks added to a new index that shares
    the rest (``WindowIndex.add_tracks``); else the index is built from every file
    (``options``: ``WindowIndexBuilder``'s, e.g. ``coarse="Flat"`` for an exact scan).
    """
    stamps = file_stamps(files)
    if previous is not None and previous.rule == rule and previous.stamps:
        changed = [f for f in files if previous.stamps.get(str(f)) != stamps[str(f)]]
        index = previous.index
        for path in changed:
            index = index.add_tracks(read_windows(path), log)
        return replace(WindowRanker.build(index, catalog_track_ids), stamps=stamps)
    texts = calibration_texts(genres)
    # An exact ("Flat") coarse index has no nprobe to calibrate: no queries to embed.
    calibrate = len(texts) >= MIN_CALIBRATION_TEXTS and options.get("coarse") != "Flat"
    queries = embed_texts(texts) if calibrate else None
    index = read_window_index(files, log, rule=rule, calibration_queries=queries, **options)
    return replace(WindowRanker.build(index, catalog_track_ids), stamps=stamps)


def file_stamps(files: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime) of each store file: what a rebuild compares to read only the changed."""
    return {str(f): _stamp(f) for f in files}


def ranker_is_current(ranker: WindowRanker | None, files: list[Path], rule: str) -> bool:
    """Whether ``ranker`` was built from these very files (unchanged) with ``rule``
    (None is current only while there are no files)."""
    if ranker is None:
        return not files
    return ranker.rule == rule and ranker.stamps == file_stamps(files)


def read_windows(path: Path) -> WindowEmbeddings:
    """One store file's rows."""
    import pyarrow.parquet as pq

    columns = ["track_id", "start_s", "end_s", "embedding"]
    return WindowEmbeddings.from_table(pq.read_table(path, columns=columns))


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
