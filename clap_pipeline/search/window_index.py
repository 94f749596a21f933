"""Track-level top-k over millions of window embeddings, each track once with its best window.

fma_full cut into 5-s windows is about 5.9 million 512-d embeddings (12 GB in float32). The
index holds them in about a quarter of that and answers "the ``k`` best tracks for this
query, by the aggregation rule, and where in each track" in a few milliseconds:

- **store**: every window as 8-bit scalar codes (:class:`Sq8`: per-dimension minimum and
  step fitted on a sample; a score's error is about 1e-3 of a cosine), in track order, so a
  track's windows are one contiguous block and its *timeline* (the score of each window) is
  one matrix-vector product. 512 B per window, plus its start and end (8 B).
- **coarse index** (faiss) over *representatives*, a few per track: for ``max`` the
  normalised mean of each run of ``pool`` consecutive windows (a track matches when one of
  its moments does: one vector per moment would let a few long tracks crowd the candidate
  list, one per track would dilute a short moment), for ``mean`` the track vector (the
  normalised mean of its windows), for ``first`` its first window. Small collections scan
  the representatives exactly; large ones use an inverted file with 4-bit fast-scan product
  quantization (``IVF{nlist},PQ{d/4}x4fs``); the number of candidates and ``nprobe`` are
  calibrated at build time on track-level recall@10 (:func:`calibrate`).
- **search**: the coarse index proposes ``candidates`` representatives; their windows (or
  track vectors) are scored from the store; the best ``k + REFINE_EXTRA`` tracks get their
  whole timeline scored; the ``k`` best by the rule come back with the best window's
  ``start_s``/``end_s``. A filter (a bool per track) keeps the allowed among a deeper
  coarse ranking (its best tracks sit deeper, in farther lists: ``nprobe`` divided by the
  square of the share it keeps; a faiss ID selector only past ``POSTFILTER_MAX``), or is an
  exact scan of the allowed tracks' windows when they are few.

Incremental: an index is immutable. :meth:`WindowIndex.add_tracks` returns a new index that
shares every existing *segment* and adds one for the new tracks (encoded with the same codec
and a copy of the trained coarse index, so nothing is retrained); a track added again
replaces its old windows. The service swaps the new index in with one assignment, so a
request never sees a half-built one; small segments are merged once there are more than
``MAX_SEGMENTS``.

The aggregation rules and their meaning are ``window_embeddings.AGGREGATIONS``; the whole
collection's scores in memory (exact, float32) are ``WindowEmbeddings.track_scores``, the
reference this index is measured against (``benchmarks/bench_serve.py --windows``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log
from clap_pipeline.search.window_store import (
    Segment,
    SegmentBuilder,
    Sq8,
    representatives,
)
from clap_pipeline.window_embeddings import AGGREGATIONS, WindowEmbeddings, l2_normalise

POOL = 3  # windows per representative for ``max`` (15 s of 5-s windows)
FLAT_MAX_REPS = 50_000  # up to this many representatives are scanned exactly
TRAIN_WINDOWS = 200_000  # windows buffered to fit the codec and train the coarse index
CANDIDATES = 256  # representatives the coarse index proposes per query (at least 16 k) ...
MAX_CANDIDATES = 2048  # ... or up to this many, as the calibration finds they are needed
FILTER_PROBE_POWER = 2.0  # a filter keeping a share s of the tracks probes nprobe / s**2 lists
POSTFILTER_MAX = 32_768  # a filter's candidates are the allowed among this many, at most
FILTERED_CANDIDATES = 0.5  # times the candidates under a filter (its allowed ones are sparser)
REFINE_EXTRA = 20  # tracks beyond k whose whole timeline is scored
EXACT_MAX_WINDOWS = 30_000  # a filter allowing at most this many windows is scanned exactly
MAX_SEGMENTS = 8
TARGET_RECALL = 0.99  # track-level recall@10 against the exact scan of the codes
CEILING_MARGIN = 0.005  # candidates: all lists probed must reach the target plus this
CALIBRATION_QUERIES = 256
CALIBRATION_COSINE = 0.5  # default calibration queries: a track's mean plus noise, this cosine


@dataclass(frozen=True)
class TrackMoment:
    """One track of a result: its score by the rule and its best-matching window."""

    position: int  # the track's position in ``WindowIndex.track_ids``
    track_id: int
    score: float
    start_s: float  # the best window's
    end_s: float
    window_start_s: np.ndarray  # float32: every window of the track, in time order
    window_scores: np.ndarray  # float32: each window's score (the track's timeline)


def coarse_factory(n_reps: int, dim: int) -> str:
    """Exact for up to ``FLAT_MAX_REPS`` representatives, else IVF with fast-scan PQ.

    ``d/4`` sub-quantizers of 4 bits (64 B at 512-d): at 5.9 million windows ``d/8`` (half
    the bytes) proposed candidates whose recall@10 stayed lower at four times the count.
    """
    if n_reps <= FLAT_MAX_REPS:
        return "Flat"
    nlist = int(np.clip(round(math.sqrt(n_reps)), 64, 1024))
    return f"IVF{nlist},PQ{dim // 4}x4fs"


@dataclass
class WindowIndex:
    """Immutable snapshot: segments, the codec, the rule; ``search`` is thread-safe."""

    rule: str
    pool: int
    codec: Sq8
    template: object  # the trained, empty coarse index new segments copy
    segments: tuple[Segment, ...]
    live: tuple[np.ndarray, ...]  # bool per track of each segment (False: replaced later)
    build_seconds: float = 0.0
    calibration_recall: float | None = None
    candidates: int = CANDIDATES
    _track_ids: np.ndarray = field(init=False, repr=False)
    _bases: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._track_ids = np.concatenate([s.track_ids for s in self.segments])
        self._bases = np.cumsum([0] + [len(s.track_ids) for s in self.segments])

    # -- what it holds -------------------------------------------------------------------

    @property
    def track_ids(self) -> np.ndarray:
        """Every track position's id (a replaced track's old position included, never served)."""
        return self._track_ids

    @property
    def dim(self) -> int:
        return int(self.codec.vmin.shape[0])

    @property
    def tracks(self) -> int:
        return int(sum(int(live.sum()) for live in self.live))

    @property
    def windows(self) -> int:
        return sum(s.windows for s in self.segments)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.segments)

    def describe(self) -> dict[str, object]:
        return {
            "kind": "windows",
            "rule": self.rule,
            "tracks": self.tracks,
            "windows": self.windows,
            "segments": len(self.segments),
            "coarse": _factory_name(self.template),
            "nprobe": [s.nprobe for s in self.segments],
            "candidates": self.candidates,
            "calibration_recall_at_10": self.calibration_recall,
            "bytes": self.nbytes(),
            "build_seconds": round(self.build_seconds, 2),
        }

    @property
    def live_mask(self) -> np.ndarray:
        """A bool per position: False where a later segment replaced the track."""
        return np.concatenate(self.live)

    def window_end(self, position: int) -> float:
        """Where the track's last window ends (seconds)."""
        seg_no = int(np.searchsorted(self._bases, position, side="right")) - 1
        seg = self.segments[seg_no]
        return float(seg.end_s[seg.offsets[position - self._bases[seg_no] + 1] - 1])

    def position(self, track_id: int) -> int:
        """The live position of ``track_id`` (KeyError when it is not indexed)."""
        hits = np.flatnonzero(self._track_ids == int(track_id))
        for pos in hits[::-1]:
            seg = int(np.searchsorted(self._bases, pos, side="right")) - 1
            if self.live[seg][pos - self._bases[seg]]:
                return int(pos)
        raise KeyError(f"track {track_id} has no window embeddings in the index")

    def allowed_mask(self, track_ids: np.ndarray) -> np.ndarray:
        """A bool per position: True where the track is one of ``track_ids``."""
        return np.isin(self._track_ids, np.asarray(track_ids, dtype=np.int64))

    # -- search --------------------------------------------------------------------------

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[TrackMoment]:
        """The ``k`` best live tracks (among ``allowed``: a bool per position) for ``query``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dimensions, the windows {self.dim}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if allowed is not None and allowed.shape != self._track_ids.shape:
            raise ValueError(f"allowed must be a bool per track position ({len(self._track_ids)})")
        parts = []  # per segment: (stage-1 scores, local tracks)
        for s, seg in enumerate(self.segments):
            keep = self.live[s]
            if allowed is not None:
                keep = keep & allowed[self._bases[s] : self._bases[s + 1]]
            scores, tracks = self._segment_candidates(seg, q, k, keep, allowed is not None)
            parts.append((scores, tracks, np.full(len(tracks), s)))
        scores, tracks, segs = (np.concatenate(p) for p in zip(*parts, strict=True))
        top = np.argsort(-scores, kind="stable")[: k + REFINE_EXTRA]
        best = [self._moment(int(segs[i]), int(tracks[i]), q) for i in top]
        best.sort(key=lambda m: (-m.score, m.position))
        return best[:k]

    def timeline(self, position: int, query: np.ndarray) -> TrackMoment:
        """One track's moment and window scores for ``query`` (e.g. a result's, or any track's)."""
        seg = int(np.searchsorted(self._bases, position, side="right")) - 1
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        return self._moment(seg, int(position - self._bases[seg]), q / np.linalg.norm(q))

    def window_embeddings(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(start_s, decoded embeddings) of one track's windows (for "more like this")."""
        seg_no = int(np.searchsorted(self._bases, position, side="right")) - 1
        seg, t = self.segments[seg_no], int(position - self._bases[seg_no])
        lo, hi = seg.offsets[t], seg.offsets[t + 1]
        return seg.start_s[lo:hi], l2_normalise(self.codec.decode(seg.codes[lo:hi]))

    def _segment_candidates(
        self, seg: Segment, q: np.ndarray, k: int, keep: np.ndarray, filtered: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(stage-1 scores, local tracks) of the segment's candidate tracks."""
        none = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if not keep.any():
            return none
        if filtered:
            allowed_tracks = np.flatnonzero(keep)
            counts = seg.offsets[allowed_tracks + 1] - seg.offsets[allowed_tracks]
            if counts.sum() <= EXACT_MAX_WINDOWS:
                scores = self._track_scores(seg, allowed_tracks, q)
                return scores, allowed_tracks
        want = self.candidates * (FILTERED_CANDIDATES if filtered else 1)
        reps = self._coarse_reps(seg, q, max(int(want), 16 * k), keep)
        if not len(reps):
            return none
        if self.rule == "max":
            tracks, scores = self._rep_window_scores(seg, reps, q)
        else:
            tracks = np.unique(seg.rep_track[reps])
            scores = self._track_scores(seg, tracks, q)
        keep_t = keep[tracks]
        return scores[keep_t], tracks[keep_t]

    def _coarse_reps(self, seg: Segment, q: np.ndarray, want: int, keep: np.ndarray) -> np.ndarray:
        """The coarse index's best ``want`` representatives of the tracks ``keep`` allows.

        A filter keeping a share ``s`` of the tracks: its best tracks sit deeper in the
        ranking, in farther lists, so ``nprobe / s**FILTER_PROBE_POWER`` lists are probed,
        and the best ``want / s`` representatives of every track hold about ``want`` allowed
        ones (cheaper than a faiss ID selector, checked for every code scanned), or when
        that is more than ``POSTFILTER_MAX``, a selector of the allowed ones. In row order.
        """
        import faiss

        every = bool(keep.all())
        share = 1.0 if every else max(np.count_nonzero(keep) / len(keep), 1e-9)
        search_k, options = want if every else math.ceil(want / share), {}
        if search_k > POSTFILTER_MAX:
            bitmap = np.packbits(np.repeat(keep, seg.reps_per_track), bitorder="little")
            options["sel"] = faiss.IDSelectorBitmap(len(seg.rep_track), faiss.swig_ptr(bitmap))
            search_k = want
        params = faiss.SearchParameters(**options) if options else None
        if seg.nprobe:
            nlist = faiss.extract_index_ivf(seg.coarse).nlist
            nprobe = min(nlist, math.ceil(seg.nprobe / share**FILTER_PROBE_POWER))
            params = faiss.SearchParametersIVF(nprobe=nprobe, **options)
        n = min(search_k, len(seg.rep_track))
        _, labels = seg.coarse.search(q.reshape(1, -1), n, params=params)
        reps = labels[0][labels[0] >= 0]
        if not every:
            reps = reps[keep[seg.rep_track[reps]]][:want]
        return np.sort(reps)  # in row order: their windows are read in order

    def _rep_window_scores(
        self, seg: Segment, reps: np.ndarray, q: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best window score of each track among the windows of ``reps``."""
        rows, heads = _runs(seg.rep_first[reps], seg.rep_count[reps])
        scores = self.codec.scores(seg.codes, q[None], rows)[:, 0]
        rep_best = np.maximum.reduceat(scores, heads)
        tracks = seg.rep_track[reps]
        order = np.lexsort((-rep_best, tracks))
        first = np.r_[True, tracks[order][1:] != tracks[order][:-1]]
        return tracks[order][first].astype(np.int64), rep_best[order][first]

    def _track_scores(self, seg: Segment, tracks: np.ndarray, q: np.ndarray) -> np.ndarray:
        """The rule's exact (codec) score of each of ``tracks``."""
        if self.rule == "mean":
            assert seg.track_codes is not None
            return self.codec.scores(seg.track_codes, q[None], tracks)[:, 0]
        if self.rule == "first":
            return self.codec.scores(seg.codes, q[None], seg.offsets[tracks])[:, 0]
        rows, heads = _runs(seg.offsets[tracks], seg.offsets[tracks + 1] - seg.offsets[tracks])
        scores = self.codec.scores(seg.codes, q[None], rows)[:, 0]
        return np.maximum.reduceat(scores, heads)

    def _moment(self, s: int, t: int, q: np.ndarray) -> TrackMoment:
        seg = self.segments[s]
        lo, hi = int(seg.offsets[t]), int(seg.offsets[t + 1])
        timeline = self.codec.scores(seg.codes[lo:hi], q[None])[:, 0]
        best = int(np.argmax(timeline))
        if self.rule == "max":
            score = float(timeline[best])
        elif self.rule == "first":
            score = float(timeline[0])
        else:
            score = float(self._track_scores(seg, np.array([t]), q)[0])
        return TrackMoment(
            int(self._bases[s] + t),
            int(seg.track_ids[t]),
            score,
            float(seg.start_s[lo + best]),
            float(seg.end_s[lo + best]),
            seg.start_s[lo:hi],
            timeline.astype(np.float32),
        )

    # -- incremental ---------------------------------------------------------------------

    def add_tracks(self, windows: WindowEmbeddings, log: Log | None = None) -> WindowIndex:
        """A new index: these tracks' windows added (replacing any earlier ones), nothing retrained."""
        if not len(windows):
            return self
        builder = SegmentBuilder(self.rule, self.pool, self.codec, self.template, len(windows))
        builder.add(windows.track_ids, windows.start_s, windows.end_s, windows.embeddings)
        segment = builder.finish(self.segments[0].nprobe, log)
        new_ids = segment.track_ids
        live = tuple(
            lv & ~np.isin(seg.track_ids, new_ids)
            for seg, lv in zip(self.segments, self.live, strict=True)
        )
        index = WindowIndex(
            self.rule,
            self.pool,
            self.codec,
            self.template,
            (*self.segments, segment),
            (*live, np.ones(len(new_ids), dtype=bool)),
            self.build_seconds,
            self.calibration_recall,
            self.candidates,
        )
        return index.compacted(log) if len(index.segments) > MAX_SEGMENTS else index

    def compacted(self, log: Log | None = None) -> WindowIndex:
        """Every segment after the first merged into one (replaced tracks dropped)."""
        if len(self.segments) <= 2:
            return self
        rest = [(seg, lv) for seg, lv in zip(self.segments[1:], self.live[1:], strict=True)]
        total = sum(int((seg.offsets[1:] - seg.offsets[:-1])[lv].sum()) for seg, lv in rest)
        builder = SegmentBuilder(self.rule, self.pool, self.codec, self.template, total)
        for seg, lv in rest:
            for t in np.flatnonzero(lv):
                lo, hi = seg.offsets[t], seg.offsets[t + 1]
                builder.add(
                    np.full(hi - lo, seg.track_ids[t]),
                    seg.start_s[lo:hi],
                    seg.end_s[lo:hi],
                    l2_normalise(self.codec.decode(seg.codes[lo:hi])),
                )
        merged = builder.finish(self.segments[0].nprobe, log)
        return WindowIndex(
            self.rule,
            self.pool,
            self.codec,
            self.template,
            (self.segments[0], merged),
            (self.live[0], np.ones(len(merged.track_ids), dtype=bool)),
            self.build_seconds,
            self.calibration_recall,
            self.candidates,
        )


def _runs(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of consecutive runs (``counts[i]`` rows from ``starts[i]``), concatenated,
    and where each run begins among them (``np.ufunc.reduceat``'s indices)."""
    counts = np.asarray(counts, dtype=np.int64)
    heads = np.cumsum(counts) - counts
    rows = np.repeat(np.asarray(starts, dtype=np.int64) - heads, counts)
    return rows + np.arange(len(rows)), heads


def _factory_name(template: object) -> str:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(template)
    except RuntimeError:
        return "Flat"
    return f"IVF{ivf.nlist},{type(ivf).__name__}"


class WindowIndexBuilder:
    """Builds a :class:`WindowIndex` from window rows streamed in (track_id, start_s) order.

    ``total_windows`` (the rows that will come: Parquet metadata knows it) sizes the store
    once, so the build never holds the float32 matrix nor a second copy of the codes. The
    first ``train_windows`` rows are buffered to fit the codec and train the coarse index.
    """

    def __init__(
        self,
        dim: int,
        total_windows: int,
        *,
        rule: str = "max",
        pool: int = POOL,
        coarse: str | None = None,
        train_windows: int = TRAIN_WINDOWS,
        target_recall: float = TARGET_RECALL,
        candidates: int = CANDIDATES,
        calibration_queries: np.ndarray | None = None,
        log: Log | None = None,
        seed: int = 0,
    ) -> None:
        if rule not in AGGREGATIONS:
            raise ValueError(f"aggregation rule must be one of {AGGREGATIONS}, got {rule!r}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1 window, got {pool}")
        self.dim, self.total, self.rule, self.pool = dim, total_windows, rule, pool
        self.coarse, self.train_windows = coarse, train_windows
        self.target_recall, self.candidates = target_recall, candidates
        self.log, self.seed = log, seed
        self.calibration_queries = calibration_queries
        self.buffer: list[tuple[np.ndarray, ...]] = []
        self.buffered = 0
        self.segment: SegmentBuilder | None = None
        self.progress = ProgressLog("window index", total_windows, log, unit="windows")
        self.start = time.perf_counter()
        self.added = 0
        self.last_id = -(2**63)

    def add(
        self, track_ids: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, embeddings: np.ndarray
    ) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (n, {self.dim}), got {emb.shape}")
        ids = np.asarray(track_ids, dtype=np.int64)
        if len(ids) and ((np.diff(ids) < 0).any() or ids[0] < self.last_id):
            raise ValueError("window rows must come sorted by track_id, each track once")
        self.last_id = int(ids[-1]) if len(ids) else self.last_id
        if self.segment is None:
            self.buffer.append((track_ids, start_s, end_s, emb))
            self.buffered += len(emb)
            if self.buffered >= self.train_windows:
                self._train()
        else:
            self.segment.add(track_ids, start_s, end_s, emb)
        self.added += len(emb)
        self.progress.update(self.added)

    def _train(self) -> None:
        import faiss

        ids, starts, ends, emb = (np.concatenate(p) for p in zip(*self.buffer, strict=True))
        self.buffer = []
        codec = Sq8.fit(emb)
        firsts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        vectors = representatives(self.rule, emb, np.r_[firsts, len(ids)], self.pool)[0]
        expected_reps = max(1, round(len(vectors) * self.total / max(len(emb), 1)))
        factory = self.coarse or coarse_factory(expected_reps, self.dim)
        template = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not template.is_trained:
            rng = np.random.default_rng(self.seed)
            ivf = faiss.extract_index_ivf(template)
            ivf.cp.seed = self.seed
            ivf.cp.niter = 10
            sample = vectors[rng.permutation(len(vectors))[: 64 * ivf.nlist]]
            if len(sample) < ivf.nlist:
                raise ValueError(
                    f"{len(sample)} representatives cannot train {factory}: use fewer lists"
                )
            template.train(sample)
        self.codec, self.template = codec, template
        self.segment = SegmentBuilder(self.rule, self.pool, codec, template, self.total)
        self.segment.add(ids, starts, ends, emb)

    def finish(self) -> WindowIndex:
        if self.segment is None:
            if not self.buffered:
                raise ValueError("no windows to index")
            self._train()
        assert self.segment is not None
        segment = self.segment.finish(0, self.log)
        index = WindowIndex(
            self.rule,
            self.pool,
            self.codec,
            self.template,
            (segment,),
            (np.ones(len(segment.track_ids), dtype=bool),),
            candidates=self.candidates,
        )
        if _factory_name(self.template) != "Flat":
            calibrate(index, self.target_recall, self.seed, self.calibration_queries)
        index.build_seconds = time.perf_counter() - self.start
        return index


def build_window_index(windows: WindowEmbeddings, **options: object) -> WindowIndex:
    """The index of windows already in memory (tests, small collections)."""
    builder = WindowIndexBuilder(windows.embeddings.shape[1], len(windows), **options)  # type: ignore[arg-type]
    builder.add(windows.track_ids, windows.start_s, windows.end_s, windows.embeddings)
    return builder.finish()


def read_window_index(files: Sequence[Path], log: Log | None = None, **options: Any) -> WindowIndex:
    """The index of ``window_embeddings`` Parquet files, streamed batch by batch.

    ``files`` in folder order (``NNN.parquet``: a folder holds the tracks of one id range,
    rows sorted by (track_id, start_s), so the files in order are sorted too); the row
    count in their footers sizes the store; ``options`` go to :class:`WindowIndexBuilder`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        raise ValueError("no window embeddings files to index")
    parquet = [pq.ParquetFile(f) for f in files]
    total = sum(p.metadata.num_rows for p in parquet)
    dim = parquet[0].schema_arrow.field("embedding").type.list_size
    builder = WindowIndexBuilder(dim, total, log=log, **options)
    columns = ["track_id", "start_s", "end_s", "embedding"]
    for path, p in zip(files, parquet, strict=True):
        for batch in p.iter_batches(batch_size=65_536, columns=columns):
            try:
                w = WindowEmbeddings.from_table(pa.Table.from_batches([batch]))
                builder.add(w.track_ids, w.start_s, w.end_s, w.embeddings)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
    return builder.finish()


def exact_top_tracks(index: WindowIndex, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) positions of each query's best live tracks by the rule, scanning every window."""
    scores = np.full((len(queries), len(index.track_ids)), -np.inf, dtype=np.float32)
    for s, seg in enumerate(index.segments):
        base = index._bases[s]
        if index.rule == "mean":
            assert seg.track_codes is not None
            block = index.codec.scores(seg.track_codes, queries).T
        elif index.rule == "first":
            block = index.codec.scores(seg.codes[seg.offsets[:-1]], queries).T
        else:
            block = np.empty((len(queries), len(seg.track_ids)), dtype=np.float32)
            step = 4096  # tracks per chunk (about 200,000 windows)
            for lo in range(0, len(seg.track_ids), step):
                hi = min(lo + step, len(seg.track_ids))
                w = index.codec.scores(seg.codes[seg.offsets[lo] : seg.offsets[hi]], queries)
                block[:, lo:hi] = np.maximum.reduceat(
                    w, seg.offsets[lo:hi] - seg.offsets[lo], axis=0
                ).T
        block[:, ~index.live[s]] = -np.inf
        scores[:, base : base + len(seg.track_ids)] = block
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def calibrate(
    index: WindowIndex,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
    queries: np.ndarray | None = None,
) -> None:
    """Set the index's ``candidates`` and every segment's ``nprobe`` from track-level recall@10.

    Recall against :func:`exact_top_tracks` (every window's codes scanned), on ``queries``
    (a service passes embeddings of real queries; default :func:`calibration_queries`):

    1. ``candidates``: the least, doubling from the index's up to ``MAX_CANDIDATES``, whose
       recall with every list probed reaches the target plus ``CEILING_MARGIN``. Many tracks
       crowd the best representatives with several of their own (a track's moments are
       alike), and the coarse codes' error reorders them: a large collection needs more.
    2. ``nprobe``: the least (doubling) that reaches the target, capped at that all-lists
       recall less the margin (the candidates, not the lists, limit it then).
    """
    import faiss

    if queries is None:
        queries = calibration_queries(index, seed)
    exact = exact_top_tracks(index, queries, 10).tolist()

    def recall_at(nprobe: int) -> float:
        for segment in index.segments:
            segment.nprobe = nprobe
        found = [{m.position for m in index.search(q, 10)} for q in queries]
        return float(np.mean([len(f & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))

    nlist = faiss.extract_index_ivf(index.template).nlist
    while (ceiling := recall_at(nlist)) < target_recall + CEILING_MARGIN:
        if index.candidates >= MAX_CANDIDATES:
            break
        index.candidates = min(2 * index.candidates, MAX_CANDIDATES)
    goal = min(target_recall, ceiling - CEILING_MARGIN)
    nprobe = 1
    while (recall := recall_at(nprobe)) < goal and nprobe < nlist:
        nprobe = min(2 * nprobe, nlist)
    index.calibration_recall = round(recall if nprobe < nlist else ceiling, 4)


def calibration_queries(index: WindowIndex, seed: int = 0) -> np.ndarray:
    """Stand-ins for text queries when no real ones are known: the mean of a random track's
    windows plus noise (cosine ``CALIBRATION_COSINE`` to it), ``CALIBRATION_QUERIES`` of them.

    A text query names what a track or a section sounds like, and sits among its windows
    rather than on one of them (a window plus noise would favour the coarse index's cells).
    """
    rng = np.random.default_rng(seed + 1)
    seg = index.segments[0]
    tracks = rng.choice(len(seg.track_ids), size=min(CALIBRATION_QUERIES, len(seg.track_ids)))
    rows, heads = _runs(seg.offsets[tracks], seg.offsets[tracks + 1] - seg.offsets[tracks])
    decoded = l2_normalise(index.codec.decode(seg.codes[rows]))
    base = l2_normalise(np.add.reduceat(decoded, heads, axis=0))
    noise = l2_normalise(rng.standard_normal(base.shape).astype(np.float32))
    c = CALIBRATION_COSINE
    return l2_normalise(c * base + math.sqrt(1 - c * c) * noise)
