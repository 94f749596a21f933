"""``bench_serve.py --windows N``: the service's window index over N synthetic window embeddings.

The windows are grouped into tracks as music is: a track lasts 30 s to 20 min (log-normal
around 4 min, so N / 55 tracks), belongs to one of ``CENTRES`` sound clusters (genre and
instrumentation), is cut into 1-5 sections (a third of them drift half-way towards another
cluster: a bridge, a solo), and its 5-s windows follow their section with noise that is
correlated from one window to the next (AR(1), rho 0.7): adjacent windows have cosine about
0.9, windows of one track about 0.65, windows of different tracks about 0. Queries are
cluster centres plus more noise (cosine about 0.3 to their best window), as a text query
sits among audio embeddings (the same model as the track benchmark above); the candidates
and ``nprobe`` are calibrated on 256 other queries drawn the same way.

The windows are generated and indexed chunk by chunk (5.9 million x 512 float32 would be
12 GB): each chunk goes to ``WindowIndexBuilder.add`` and, in the same pass, into the exact
track scores of every query (float32, every window, the rule's aggregation), of which each
query's 10 best tracks (and 10 best allowed by the filter) are kept: the reference of
track-level recall@10. Printed, with the load average before and after: build time, the
index's bytes, the process's RSS once built (VmRSS: the index, the interpreter and the
benchmark's few arrays), p50/p95 of track-level top-10 alone, with a filter that keeps 5 %
of the tracks, and of the exact scan of every window's codes (the reference in the same
run), and recall@10 of both searches against the exact float32 result.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Iterator

import numpy as np

from clap_pipeline.processes import fix_mmap_threshold
from clap_pipeline.progress import human_bytes
from clap_pipeline.search.window_index import (
    CALIBRATION_QUERIES,
    WindowIndexBuilder,
    exact_top_tracks,
)
from clap_pipeline.windows import CLIP_SECONDS

DIM = 512
CENTRES = 1_000
QUERY_NOISE = 1.5
TRACKS_PER_CHUNK = 2_000
FILTER_EVERY = 20  # tracks whose id is a multiple of 20 pass the filter: 5 %
EXACT_QUERIES = 10  # the exact scan reads every code: a few queries time it


def synthetic_tracks(
    n_windows: int, centres: np.ndarray, seed: int, clip_s: float | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(track_ids, start_s, end_s, embeddings) chunks, rows in track order, n_windows in all.

    ``clip_s``: every track is a clip that long (fma_large's 30 s: 6 windows), else whole
    tracks of 30 s to 20 min (fma_full's).
    """
    rng = np.random.default_rng(seed)
    done, first_id = 0, 0
    while done < n_windows:
        seconds = np.clip(rng.lognormal(math.log(240), 0.5, TRACKS_PER_CHUNK), 30, 1200)
        if clip_s is not None:
            seconds = np.full(TRACKS_PER_CHUNK, clip_s)
        counts = np.ceil(seconds / CLIP_SECONDS).astype(np.int64)
        room = n_windows - done
        counts = counts[: int(np.searchsorted(np.cumsum(counts), room)) + 1]
        counts[-1] -= max(0, int(counts.sum()) - room)
        yield _chunk(rng, counts, centres, first_id)
        done += int(counts.sum())
        first_id += len(counts)


def _chunk(
    rng: np.random.Generator, counts: np.ndarray, centres: np.ndarray, first_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_tracks, n = len(counts), int(counts.sum())
    track_of = np.repeat(np.arange(n_tracks), counts)
    firsts = np.cumsum(counts) - counts
    within = np.arange(n) - np.repeat(firsts, counts)
    tracks = centres[rng.integers(0, len(centres), n_tracks)]
    tracks += 0.8 * rng.standard_normal(tracks.shape, dtype=np.float32)
    # Sections: up to 5 per track at random cut points; a third drift towards another cluster.
    sections_per_track = np.minimum(1 + rng.poisson(1.2, n_tracks), 5)
    cuts = np.sort(rng.random((n_tracks, 4)), axis=1)
    position = within / np.repeat(counts, counts)
    section = np.minimum(
        (position[:, None] >= cuts[track_of]).sum(axis=1),
        np.repeat(sections_per_track, counts) - 1,
    )
    drift = np.where(rng.random((n_tracks, 5)) < 0.3, 0.5, 0.0).astype(np.float32)
    other = centres[rng.integers(0, len(centres), (n_tracks, 5))]
    sections = (1 - drift[..., None]) * tracks[:, None, :] + drift[..., None] * other
    sections += 0.5 * rng.standard_normal(sections.shape, dtype=np.float32)
    noise = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    for j in range(1, int(counts.max())):  # AR(1) along each track's windows
        rows = firsts[counts > j] + j
        noise[rows] = 0.7 * noise[rows - 1] + math.sqrt(1 - 0.49) * noise[rows]
    emb = sections[track_of, section] + noise
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    start = (within * CLIP_SECONDS).astype(np.float64)
    return np.arange(first_id, first_id + n_tracks)[track_of], start, start + CLIP_SECONDS, emb


def text_like_queries(n: int, centres: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = centres[rng.integers(0, len(centres), n)]
    q = q + QUERY_NOISE * rng.standard_normal(q.shape, dtype=np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_scores(
    queries: np.ndarray, emb: np.ndarray, offsets: np.ndarray, rule: str
) -> np.ndarray:
    """(q, tracks) float32 scores of one chunk's tracks by ``rule``."""
    if rule == "max":
        return np.maximum.reduceat(queries @ emb.T, offsets, axis=1)
    if rule == "first":
        return queries @ emb[offsets].T
    sums = np.add.reduceat(emb, offsets, axis=0)
    return queries @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T


class ExactTop:
    """Each query's 10 best tracks by the exact float32 scores, and its 10 best among the
    filter's, kept as chunks stream by (every track's scores would be counted in the RSS).
    Track ids are positions in the index (generated in order)."""

    def __init__(self, queries: int, k: int = 10) -> None:
        empty = np.full((queries, 0), -np.inf, dtype=np.float32), np.zeros((queries, 0), int)
        self.k, self.plain, self.filtered = k, empty, empty

    def add(self, scores: np.ndarray, track_ids: np.ndarray) -> None:
        self.plain = self._merge(self.plain, scores, track_ids)
        allowed = track_ids % FILTER_EVERY == 0
        self.filtered = self._merge(self.filtered, scores[:, allowed], track_ids[allowed])

    def _merge(
        self, kept: tuple[np.ndarray, np.ndarray], scores: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        both = np.concatenate([kept[0], scores], axis=1)
        where = np.concatenate([kept[1], np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-both, axis=1, kind="stable")[:, : self.k]
        return np.take_along_axis(both, top, axis=1), np.take_along_axis(where, top, axis=1)


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def ms(seconds: list[float]) -> str:
    values = np.array(seconds) * 1000
    return f"p50 {np.percentile(values, 50):7.2f} ms  p95 {np.percentile(values, 95):7.2f} ms"


def recall(found: list[list[int]], exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact.tolist(), strict=True)])
    )


def bench_windows(
    n_windows: int,
    queries: int,
    rule: str,
    pool: int,
    coarse: str | None,
    candidates: int,
    clip_s: float | None = None,
) -> None:
    import faiss

    fix_mmap_threshold()  # as in the service, which loads a CLAP (model/clap.load_clap)
    centres = np.random.default_rng(0).standard_normal((CENTRES, DIM)).astype(np.float32)
    qs = text_like_queries(queries, centres, 2)
    rss_before = rss_bytes()
    builder = WindowIndexBuilder(
        DIM,
        n_windows,
        rule=rule,
        pool=pool,
        coarse=coarse,
        candidates=candidates,
        # Calibrated on queries drawn like the measured ones (another seed), as the service
        # calibrates on text queries ("<genre> music") rather than on noisy windows.
        calibration_queries=text_like_queries(CALIBRATION_QUERIES, centres, 3),
        log=lambda line: print(line, flush=True),
    )
    exact = ExactTop(len(qs))
    t0 = time.perf_counter()
    gen_s = 0.0
    chunks = synthetic_tracks(n_windows, centres, seed=1, clip_s=clip_s)
    while True:
        t_gen = time.perf_counter()
        chunk = next(chunks, None)
        gen_s += time.perf_counter() - t_gen
        if chunk is None:
            break
        ids, start, end, emb = chunk
        t_gen = time.perf_counter()
        firsts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        exact.add(exact_scores(qs, emb, firsts, rule), ids[firsts])
        gen_s += time.perf_counter() - t_gen
        builder.add(ids, start, end, emb)
        del chunk, emb
    index = builder.finish()
    build_s = time.perf_counter() - t0 - gen_s
    gc.collect()
    rss = rss_bytes()
    n_tracks = index.tracks
    allowed = index.track_ids % FILTER_EVERY == 0
    exact_top, exact_filtered = exact.plain[1], exact.filtered[1]
    faiss.omp_set_num_threads(1)  # the service answers one query per core
    for q in qs[:5]:  # warm-up
        index.search(q, 10)
    plain, filtered, found, found_f, moments = [], [], [], [], 0
    for q in qs:
        t1 = time.perf_counter()
        result = index.search(q, 10)
        t2 = time.perf_counter()
        result_f = index.search(q, 10, allowed)
        t3 = time.perf_counter()
        plain.append(t2 - t1)
        filtered.append(t3 - t2)
        found.append([m.position for m in result])
        found_f.append([m.position for m in result_f])
        moments += sum(m.start_s < m.end_s for m in result)
    exact_times = []
    for q in qs[:EXACT_QUERIES]:
        t1 = time.perf_counter()
        exact_top_tracks(index, q[None], 10)
        exact_times.append(time.perf_counter() - t1)
    info = index.describe()
    print(
        f"window index, rule {rule}, over {n_windows:,} windows x {DIM} in {n_tracks:,} "
        f"{'whole tracks' if clip_s is None else f'{clip_s:g}-s clips'} "
        f"(generated in {gen_s:.0f} s, not counted):\n"
        f"  build {build_s:.1f} s ({info['coarse']}, pool {pool}, nprobe {info['nprobe']}, "
        f"candidates {info['candidates']}, "
        f"calibration recall@10 {info['calibration_recall_at_10']}); index "
        f"{human_bytes(index.nbytes())} ({index.nbytes() / n_windows:.0f} B per window; "
        f"float32 would be {human_bytes(n_windows * DIM * 4)}); process RSS once built "
        f"{human_bytes(rss)} = {rss / 1e9:.2f} GB ({human_bytes(rss_before)} before the build)\n"
        f"  top-10 tracks            {ms(plain)}  recall@10 vs exact float32 "
        f"{recall(found, exact_top):.4f} ({queries} queries, {moments} moments)\n"
        f"  top-10, 5 % of tracks    {ms(filtered)}  recall@10 vs exact float32 "
        f"{recall(found_f, exact_filtered):.4f}\n"
        f"  exact scan of the codes  {ms(exact_times)}  (reference, {EXACT_QUERIES} queries)",
        flush=True,
    )
    print(f"load average {os.getloadavg()} after the window index", flush=True)
