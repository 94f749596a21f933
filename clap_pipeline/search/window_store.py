"""The window store of ``search/window_index.py``: 8-bit codes in track order, segments, representatives.

A :class:`Segment` holds some tracks' windows as :class:`Sq8` codes (one contiguous block per
track), their start and end times, the representatives the coarse faiss index is built on,
and that index. :class:`SegmentBuilder` encodes rows streamed in (track_id, start_s) order
into one segment with a codec and a trained (empty) coarse index it copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clap_pipeline.reporting import Log
from clap_pipeline.window_embeddings import l2_normalise

GEMV_BLOCK_ROWS = 512


@dataclass(frozen=True)
class Sq8:
    """8-bit scalar quantization: ``x ~= vmin + code * step`` per dimension."""

    vmin: np.ndarray  # float32 (d,)
    step: np.ndarray  # float32 (d,)

    @classmethod
    def fit(cls, sample: np.ndarray) -> Sq8:
        lo, hi = sample.min(axis=0), sample.max(axis=0)
        margin = 0.05 * (hi - lo)  # rows beyond the sample's range are clipped, rarely
        lo, hi = lo - margin, hi + margin
        step = np.maximum((hi - lo) / 255.0, 1e-9)
        return cls(lo.astype(np.float32), step.astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        codes = np.rint((np.asarray(x, dtype=np.float32) - self.vmin) / self.step)
        return np.clip(codes, 0, 255).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.step + self.vmin

    def scores(
        self, codes: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, q) inner products of decoded ``codes`` (n, d), or of ``codes[rows]``, with
        ``queries`` (q, d).

        One query's product runs in blocks of ``GEMV_BLOCK_ROWS`` rows: OpenBLAS runs a
        larger matrix-vector product on every core, and on a busy machine the threads'
        hand-off cost 30 ms where one thread takes 2 (a server runs one query per core).
        The blocks are read into one buffer, converted into another: the service serves
        every allocation of 256 KB or more with its own mmap
        (``processes.fix_mmap_threshold``), whose page faults made a fresh array per block
        (and a gathered copy of the rows) cost several times the arithmetic.
        """
        weights = (queries * self.step).T.astype(np.float32)
        offset = (queries @ self.vmin).astype(np.float32)
        if len(queries) > 1:
            picked = codes if rows is None else codes[rows]
            return picked.astype(np.float32) @ weights + offset
        n = len(codes) if rows is None else len(rows)
        out = np.empty((n, 1), dtype=np.float32)
        block = np.empty((min(GEMV_BLOCK_ROWS, n), codes.shape[1]), dtype=np.float32)
        gathered = np.empty(block.shape, dtype=np.uint8)
        for lo in range(0, n, GEMV_BLOCK_ROWS):
            m = min(GEMV_BLOCK_ROWS, n - lo)
            if rows is None:
                np.copyto(block[:m], codes[lo : lo + m])
            else:
                np.take(codes, rows[lo : lo + m], axis=0, out=gathered[:m], mode="clip")
                np.copyto(block[:m], gathered[:m])
            np.matmul(block[:m], weights, out=out[lo : lo + m])
        return out + offset


@dataclass
class Segment:
    """Windows of some tracks in track order, their codes and the coarse index over them."""

    track_ids: np.ndarray  # int64 (T,)
    offsets: np.ndarray  # int64 (T + 1,): track t's windows are rows offsets[t]:offsets[t+1]
    start_s: np.ndarray  # float32 (W,)
    end_s: np.ndarray  # float32 (W,)
    codes: np.ndarray  # uint8 (W, d)
    track_codes: np.ndarray | None  # uint8 (T, d): the track vectors (rule ``mean``)
    rep_track: np.ndarray  # int32 (R,): local track of each representative
    rep_first: np.ndarray  # int64 (R,): its first window row
    rep_count: np.ndarray  # int32 (R,): its number of windows
    coarse: object  # faiss index over the representatives, labels 0..R-1
    nprobe: int = 0
    reps_per_track: np.ndarray = field(init=False, repr=False)  # int64 (T,)

    def __post_init__(self) -> None:
        # Representatives come in track order: np.repeat(a bool per track, this) is a bool
        # per representative.
        self.reps_per_track = np.bincount(self.rep_track, minlength=len(self.track_ids))

    @property
    def windows(self) -> int:
        return int(self.offsets[-1])

    def nbytes(self) -> int:
        import faiss

        arrays = (self.track_ids, self.offsets, self.start_s, self.end_s, self.codes)
        arrays += (self.rep_track, self.rep_first, self.rep_count)
        extra = 0 if self.track_codes is None else self.track_codes.nbytes
        extra += self.reps_per_track.nbytes
        coarse = int(faiss.serialize_index(self.coarse).nbytes)
        return sum(a.nbytes for a in arrays) + extra + coarse


def representatives(
    rule: str, embeddings: np.ndarray, offsets: np.ndarray, pool: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, local track, first window row, window count) of each representative."""
    counts = np.diff(offsets)
    tracks = np.arange(len(counts), dtype=np.int32)
    if rule == "first":
        ones = np.ones(len(counts), dtype=np.int32)
        return embeddings[offsets[:-1]], tracks, offsets[:-1].copy(), ones
    if rule == "mean":
        sums = np.add.reduceat(embeddings, offsets[:-1], axis=0)
        return l2_normalise(sums), tracks, offsets[:-1].copy(), counts.astype(np.int32)
    per_track = -(-counts // pool)  # ceil
    rep_track = np.repeat(tracks, per_track)
    within = np.arange(len(rep_track)) - np.repeat(np.cumsum(per_track) - per_track, per_track)
    first = offsets[:-1][rep_track] + within * pool
    count = np.minimum(pool, offsets[1:][rep_track] - first).astype(np.int32)
    return l2_normalise(np.add.reduceat(embeddings, first, axis=0)), rep_track, first, count


class SegmentBuilder:
    """Encodes rows sorted by (track, start) into one segment with a trained codec and template."""

    def __init__(self, rule: str, pool: int, codec: Sq8, template: object, total: int) -> None:
        import faiss

        self.rule, self.pool, self.codec = rule, pool, codec
        dim = codec.vmin.shape[0]
        self.codes = np.empty((total, dim), dtype=np.uint8)
        self.start_s = np.empty(total, dtype=np.float32)
        self.end_s = np.empty(total, dtype=np.float32)
        self.coarse = faiss.clone_index(template)
        self.track_ids: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.track_codes: list[np.ndarray] = []
        self.reps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_vectors: list[np.ndarray] = []
        self.pending = 0
        self.rows = 0
        self.tracks = 0
        self.last_id: int | None = None
        self.tail: tuple[np.ndarray, ...] | None = None  # rows of a track that may continue

    def add(
        self, track_ids: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, emb: np.ndarray
    ) -> None:
        parts = (
            np.asarray(track_ids, dtype=np.int64),
            np.asarray(start_s, dtype=np.float32),
            np.asarray(end_s, dtype=np.float32),
            np.asarray(emb, dtype=np.float32),
        )
        if self.tail is not None:
            parts = tuple(np.concatenate([a, b]) for a, b in zip(self.tail, parts, strict=True))
        ids = parts[0]
        if not len(ids):
            return
        if (np.diff(ids) < 0).any() or (self.last_id is not None and ids[0] <= self.last_id):
            raise ValueError("window rows must come sorted by track_id, each track once")
        cut = int(np.searchsorted(ids, ids[-1]))  # the last track may continue next call
        self.tail = tuple(a[cut:] for a in parts)
        if cut:
            self._encode(*(a[:cut] for a in parts))

    def _encode(
        self, ids: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, emb: np.ndarray
    ) -> None:
        n = len(ids)
        if self.rows + n > len(self.codes):
            raise ValueError(f"more than the {len(self.codes)} windows announced")
        firsts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        offsets = np.r_[firsts, n]
        self.codes[self.rows : self.rows + n] = self.codec.encode(emb)
        self.start_s[self.rows : self.rows + n] = start_s
        self.end_s[self.rows : self.rows + n] = end_s
        vectors, rep_track, rep_first, rep_count = representatives(
            self.rule, emb, offsets, self.pool
        )
        if self.rule == "mean":
            self.track_codes.append(self.codec.encode(vectors))
        self.reps.append((rep_track + self.tracks, rep_first + self.rows, rep_count))
        self.pending_vectors.append(vectors)
        self.pending += len(vectors)
        if self.pending >= 65_536:  # fast-scan lists are packed in blocks: add in big batches
            self._flush()
        self.track_ids.append(ids[firsts])
        self.counts.append(np.diff(offsets))
        self.rows += n
        self.tracks += len(firsts)
        self.last_id = int(ids[-1])

    def _flush(self) -> None:
        if self.pending_vectors:
            self.coarse.add(np.concatenate(self.pending_vectors))  # type: ignore[attr-defined]
        self.pending_vectors, self.pending = [], 0

    def finish(self, nprobe: int, log: Log | None = None) -> Segment:
        if self.tail is not None and len(self.tail[0]):
            tail, self.tail = self.tail, None
            self._encode(*tail)
        self._flush()
        if log is not None:
            log(f"window index segment: {self.tracks} tracks, {self.rows} windows")
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, dtype=np.int64)
        rep_parts = list(zip(*self.reps, strict=True)) if self.reps else [[], [], []]
        return Segment(
            np.concatenate(self.track_ids) if self.track_ids else np.zeros(0, dtype=np.int64),
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            self.start_s[: self.rows],
            self.end_s[: self.rows],
            self.codes[: self.rows],
            np.concatenate(self.track_codes) if self.track_codes else None,
            np.concatenate(rep_parts[0]).astype(np.int32) if self.reps else np.zeros(0, np.int32),
            np.concatenate(rep_parts[1]).astype(np.int64) if self.reps else np.zeros(0, np.int64),
            np.concatenate(rep_parts[2]).astype(np.int32) if self.reps else np.zeros(0, np.int32),
            self.coarse,
            nprobe,
        )
