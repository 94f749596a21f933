"""The window index: track-level top-k by the rule, best window, filters, incremental segments."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_pipeline.search import window_index
from clap_pipeline.search.window_index import (
    CANDIDATES,
    MAX_SEGMENTS,
    build_window_index,
    exact_top_tracks,
    read_window_index,
)
from clap_pipeline.search.window_store import Sq8
from clap_pipeline.window_embeddings import WindowEmbeddings, window_embeddings_schema
from clap_pipeline.windows import WindowRule

DIM = 32


def collection(n_tracks: int, seed: int, first_id: int = 0) -> WindowEmbeddings:
    """Tracks of 3-30 windows around 20 clusters, adjacent windows correlated."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((20, DIM)).astype(np.float32)
    ids, starts, rows = [], [], []
    for t in range(n_tracks):
        n = int(rng.integers(3, 31))
        base = centres[rng.integers(0, 20)] + 0.7 * rng.standard_normal(DIM)
        walk = np.cumsum(0.4 * rng.standard_normal((n, DIM)), axis=0)
        rows.append(base + walk)
        ids += [first_id + 3 * t] * n  # ids with gaps, as FMA's
        starts += [5.0 * i for i in range(n)]
    emb = np.concatenate(rows).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    start = np.array(starts)
    return WindowEmbeddings(np.array(ids, dtype=np.int64), start, start + 5.0, emb)


def queries(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("rule", ["max", "mean", "first"])
def test_flat_index_ranks_tracks_as_the_exact_scores_do(rule: str) -> None:
    windows = collection(300, 1)
    index = build_window_index(windows, rule=rule)
    exact = windows.track_scores(queries(20, 2), rule)
    best_rows = windows.best_windows(queries(20, 2))
    for qi, q in enumerate(queries(20, 2)):
        result = index.search(q, 10)
        assert len({m.track_id for m in result}) == 10  # each track once
        got = np.array([m.score for m in result])
        assert np.all(np.diff(got) <= 0)
        want = np.sort(exact[qi])[::-1][:10]
        np.testing.assert_allclose(got, want, atol=0.02)  # 8-bit codes
        top = np.argsort(-exact[qi])[:10]
        assert len(set(windows.tracks[top]) & {m.track_id for m in result}) >= 9
        for m in result:
            t = int(np.flatnonzero(windows.tracks == m.track_id)[0])
            assert m.end_s == m.start_s + 5.0
            assert len(m.window_scores) == windows.windows_per_track[t]
            assert m.window_start_s[int(np.argmax(m.window_scores))] == m.start_s
            if rule == "max":  # the best window is the one the exact scores pick (or a near tie)
                row = best_rows[qi, t]
                exact_best = float(windows.embeddings[row] @ q)
                assert m.score == pytest.approx(exact_best, abs=0.02)


def test_filter_returns_only_allowed_tracks_and_k_of_them() -> None:
    windows = collection(300, 3)
    index = build_window_index(windows)
    allowed = index.track_ids % 2 == 0  # ids are multiples of 3: half of them even
    q = queries(1, 4)[0]
    result = index.search(q, 10, allowed)
    assert len(result) == 10
    assert all(m.track_id % 2 == 0 for m in result)
    exact = windows.track_scores(q[None], "max")[0]
    exact[windows.tracks % 2 == 1] = -np.inf
    assert [m.track_id for m in result][:5] == list(windows.tracks[np.argsort(-exact)[:5]])
    few = index.allowed_mask(index.track_ids[:3])
    assert sorted(m.track_id for m in index.search(q, 10, few)) == list(index.track_ids[:3])
    assert index.search(q, 10, np.zeros_like(allowed)) == []


def test_ivf_index_is_calibrated_and_finds_the_exact_tracks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    windows = collection(1500, 5)
    index = build_window_index(windows, coarse="IVF32,PQ8x4fs", pool=2, train_windows=5_000)
    info = index.describe()
    assert info["coarse"].startswith("IVF32")
    # Calibrated to 0.99, or to 0.005 below the recall of probing every list.
    assert info["calibration_recall_at_10"] >= 0.9 and 1 <= info["nprobe"][0] <= 32
    qs = queries(50, 6)
    exact = [set(windows.tracks[row]) for row in exact_top_tracks(index, qs, 10)]

    def recall(allowed: np.ndarray | None = None, want: list[set] = exact) -> float:
        found = [{m.track_id for m in index.search(q, 10, allowed)} for q in qs]
        return float(np.mean([len(f & e) / 10 for f, e in zip(found, want, strict=True)]))

    calibrated = recall()
    assert calibrated >= 0.95  # fresh queries, not the calibration's
    # Crude coarse codes misorder the representatives: the calibration raised the
    # candidates, and the default number would lose tracks even with every list probed.
    assert index.candidates > CANDIDATES
    raised, nprobe = index.candidates, index.segments[0].nprobe
    index.candidates, index.segments[0].nprobe = CANDIDATES, 32
    assert recall() < calibrated - 0.03
    index.candidates, index.segments[0].nprobe = raised, nprobe
    # A filter through the coarse index (not the exact scan of few windows) finds the
    # allowed tracks' exact best, the allowed among more candidates or by an ID selector.
    monkeypatch.setattr(window_index, "EXACT_MAX_WINDOWS", 0)
    allowed = index.track_ids % 2 == 0  # ids are multiples of 3: half of them even
    scores = np.where(windows.tracks % 2 == 0, windows.track_scores(qs, "max"), -np.inf)
    want = [set(windows.tracks[row]) for row in np.argsort(-scores, axis=1)[:, :10]]
    for postfilter_max in (window_index.POSTFILTER_MAX, 0):
        monkeypatch.setattr(window_index, "POSTFILTER_MAX", postfilter_max)
        assert recall(allowed, want) >= 0.95
        for q in qs[:5]:
            result = index.search(q, 10, allowed)
            assert len(result) == 10 and all(m.track_id % 2 == 0 for m in result)


def test_windows_streamed_in_pieces_build_the_same_index() -> None:
    windows = collection(200, 7)
    whole = build_window_index(windows)
    from clap_pipeline.search.window_index import WindowIndexBuilder

    builder = WindowIndexBuilder(DIM, len(windows), train_windows=500)
    for lo in range(0, len(windows), 333):  # pieces cut inside tracks
        sl = slice(lo, lo + 333)
        builder.add(
            windows.track_ids[sl], windows.start_s[sl], windows.end_s[sl], windows.embeddings[sl]
        )
    pieces = builder.finish()
    assert list(pieces.track_ids) == list(whole.track_ids)
    q = queries(1, 8)[0]
    assert [m.track_id for m in pieces.search(q, 5)] == [m.track_id for m in whole.search(q, 5)]
    with pytest.raises(ValueError, match="sorted by track_id"):
        b = WindowIndexBuilder(DIM, 10, train_windows=1)
        b.add(np.array([5, 4]), np.zeros(2), np.ones(2), windows.embeddings[:2])


def test_added_tracks_are_served_and_replace_older_windows_without_touching_the_old_index() -> None:
    windows = collection(200, 9)
    old = build_window_index(windows)
    q = queries(1, 10)[0]
    before = [m.track_id for m in old.search(q, 10)]
    # A new track that is the query itself, and the best old track re-embedded far away.
    replaced = before[0]
    new = WindowEmbeddings(
        np.array([replaced, replaced, 10_000, 10_000]),
        np.array([0.0, 5.0, 0.0, 5.0]),
        np.array([5.0, 10.0, 5.0, 10.0]),
        np.stack([-q, -q, q, q]).astype(np.float32),
    )
    newer = old.add_tracks(new)
    result = newer.search(q, 10)
    assert result[0].track_id == 10_000 and result[0].score == pytest.approx(1.0, abs=0.02)
    assert replaced not in [m.track_id for m in result]
    assert [m.track_id for m in old.search(q, 10)] == before  # the old snapshot is unchanged
    assert newer.tracks == old.tracks + 1
    assert newer.window_embeddings(newer.position(replaced))[1] @ q == pytest.approx(
        [-1, -1], abs=0.02
    )
    # Many small additions are merged: at most MAX_SEGMENTS segments, nothing lost.
    index = newer
    for i in range(MAX_SEGMENTS + 2):
        index = index.add_tracks(collection(3, 20 + i, first_id=20_000 + 100 * i))
    assert len(index.segments) <= MAX_SEGMENTS
    assert index.tracks == newer.tracks + 3 * (MAX_SEGMENTS + 2)
    assert index.search(q, 1)[0].track_id == 10_000


def test_searches_keep_answering_while_new_indexes_are_swapped_in() -> None:
    state = {"index": build_window_index(collection(150, 11))}
    errors: list[BaseException] = []
    stop = threading.Event()
    q = queries(1, 12)[0]

    def search_loop() -> None:
        while not stop.is_set():
            try:
                assert len(state["index"].search(q, 5)) == 5
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=search_loop) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(12):
        state["index"] = state["index"].add_tracks(collection(5, 30 + i, first_id=50_000 + 100 * i))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert state["index"].tracks == 150 + 60


def test_sq8_scores_are_close_to_float_scores() -> None:
    x = collection(50, 13).embeddings
    codec = Sq8.fit(x)
    qs = queries(5, 14)
    np.testing.assert_allclose(codec.scores(codec.encode(x), qs), x @ qs.T, atol=0.01)


def write_windows_file(path: Path, windows: WindowEmbeddings) -> Path:
    """A window-embeddings store file of ``windows`` (the floor's schema)."""
    schema = window_embeddings_schema(
        DIM, model_version="1", model_fingerprint="f", model_source="s", rule=WindowRule()
    )
    n = len(windows)
    table = pa.table(
        {
            "track_id": windows.track_ids,
            "start_s": windows.start_s,
            "end_s": windows.end_s,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(windows.embeddings.ravel()), DIM
            ),
            "source_size": np.zeros(n, dtype=np.int64),
            "source_mtime": np.zeros(n),
        },
        schema=schema,
    )
    pq.write_table(table, path, row_group_size=50)
    return path


def test_index_is_read_from_window_embeddings_parquet_files(tmp_path: Path) -> None:
    windows = collection(120, 15)
    half = [int(t) for t in windows.tracks[:60]]
    files = [
        write_windows_file(tmp_path / "000.parquet", windows.subset(half)),
        write_windows_file(
            tmp_path / "001.parquet", windows.subset([int(t) for t in windows.tracks[60:]])
        ),
    ]
    index = read_window_index(files)
    assert index.windows == len(windows) and list(index.track_ids) == list(windows.tracks)
    q = queries(1, 16)[0]
    want = build_window_index(windows).search(q, 5)
    assert [m.track_id for m in index.search(q, 5)] == [m.track_id for m in want]
    with pytest.raises(ValueError, match=r"000\.parquet.*sorted by track_id"):
        read_window_index(files[::-1])
