"""The engine with window embeddings: tracks ranked by their windows, each result's moment,
filters, hybrid fusion, "more like this" by windows and from a moment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.search.engine import SearchIndex
from clap_pipeline.search.filters import Filters, build_catalog
from clap_pipeline.search.index import IndexInfo
from clap_pipeline.search.lexical import build_lexical_index
from clap_pipeline.search.results import clock, format_table, m3u_text
from clap_pipeline.search.vector_index import build_vector_index
from clap_pipeline.search.window_index import build_window_index
from clap_pipeline.search.window_ranker import (
    MomentNotFoundError,
    WindowRanker,
    build_window_ranker,
)
from clap_pipeline.window_embeddings import WindowEmbeddings
from clap_pipeline_tests.search.test_window_index import (
    DIM,
    collection,
    queries,
    write_windows_file,
)

GENRES = ["Folk", "Rock", "Jazz", "Blues"]


def search_index(windows: WindowEmbeddings, extra_catalog_ids: tuple[int, ...] = ()) -> SearchIndex:
    ids = sorted([*windows.tracks.tolist(), *extra_catalog_ids])
    catalog = build_catalog(
        {
            "track_id": ids,
            "title": [f"song {i}" for i in ids],
            "artist": [f"artist {i % 7}" for i in ids],
            "genre": [GENRES[i % 4] for i in ids],
            "audio_path": [f"/music/{i}.mp3" for i in ids],
        }
    )
    firsts = np.zeros((len(ids), DIM), dtype=np.float32)
    has = np.isin(ids, windows.tracks)
    firsts[has] = windows.track_vectors("first")
    info = IndexInfo(len(ids), DIM, "1", None, (len(ids),))
    ranker = WindowRanker.build(build_window_index(windows), catalog.track_ids)
    lexical = build_lexical_index(catalog)
    return SearchIndex(catalog, build_vector_index(firsts), lexical, info, windows=ranker)


def test_audio_results_are_ranked_by_windows_and_carry_their_moment() -> None:
    windows = collection(200, 21)
    index = search_index(windows, extra_catalog_ids=(1_000_001,))  # one track without windows
    for q in queries(5, 22):
        results = index.search("anything", q, 10, mode="audio")
        exact = windows.track_scores(q[None], "max")[0]
        best_rows = windows.best_windows(q[None])[0]
        assert len({r.track_id for r in results}) == 10
        assert results[0].track_id == int(windows.tracks[np.argmax(exact)])
        for r in results:
            t = int(np.flatnonzero(windows.tracks == r.track_id)[0])
            assert r.moment is not None
            assert r.score == pytest.approx(exact[t], abs=0.02)
            assert r.moment.score == pytest.approx(r.score, abs=1e-6)  # max: the best window
            chosen = np.flatnonzero(
                (windows.track_ids == r.track_id) & (windows.start_s == r.moment.start_s)
            )[0]  # the best window, or one within the 8-bit codes' error of it
            assert windows.embeddings[chosen] @ q >= windows.embeddings[best_rows[t]] @ q - 0.01
            assert r.moment.end_s == r.moment.start_s + 5.0
            assert len(r.moment.timeline_scores) == windows.windows_per_track[t]
        assert 1_000_001 not in [r.track_id for r in results]


def test_filters_and_hybrid_mode_keep_working_with_windows() -> None:
    index = search_index(collection(200, 23))
    q = queries(1, 24)[0]
    folk = index.search("anything", q, 10, Filters(genre="Folk"), mode="audio")
    assert len(folk) == 10 and {r.genre for r in folk} == {"Folk"}
    hybrid = index.search("song", q, 10, mode="hybrid")
    assert len(hybrid) == 10 and all(r.moment is not None for r in hybrid)
    text_only = index.search("song", None, 5, mode="text")
    assert all(r.moment is None for r in text_only)  # no query embedding: no moment


def test_more_like_this_by_windows_and_from_a_moment() -> None:
    base = collection(100, 25)
    source = int(base.tracks[0])
    rows = np.flatnonzero(base.track_ids == source)
    # Track 999,999 repeats the source's window at 10-15 s, then goes elsewhere.
    far = -base.embeddings[rows[0]]
    planted = WindowEmbeddings(
        np.full(3, 999_999),
        np.array([0.0, 5.0, 10.0]),
        np.array([5.0, 10.0, 15.0]),
        np.stack([base.embeddings[rows[2]], far, far]).astype(np.float32),
    )
    both = WindowEmbeddings(
        np.r_[base.track_ids, planted.track_ids],
        np.r_[base.start_s, planted.start_s],
        np.r_[base.end_s, planted.end_s],
        np.concatenate([base.embeddings, planted.embeddings]),
    )
    index = search_index(both)
    at_moment = index.similar(source, 5, start_s=12.5)
    assert at_moment[0].track_id == 999_999
    assert at_moment[0].score == pytest.approx(1.0, abs=0.02)
    # Its moment: the planted window at 0-5 s, the one that repeats the source's 10-15 s.
    assert at_moment[0].moment is not None and at_moment[0].moment.start_s == 0.0
    whole = index.similar(source, 5)
    assert source not in [r.track_id for r in whole] and len(whole) == 5
    assert all(r.moment is not None for r in whole)
    with pytest.raises(MomentNotFoundError, match="outside the track's windows"):
        index.similar(source, 5, start_s=10_000.0)


def test_table_and_playlist_say_where_each_track_matches() -> None:
    index = search_index(collection(60, 26))
    results = index.search("anything", queries(1, 27)[0], 3, mode="audio")
    table = format_table(results)
    assert table.splitlines()[0].split()[-1] == "moment"
    for r in results:
        assert f"at {clock(r.moment.start_s)}" in table
    lines = m3u_text(results).splitlines()
    for r in results:
        at = lines.index(f"/music/{r.track_id}.mp3")
        assert lines[at - 1] == f"#EXTVLCOPT:start-time={r.moment.start_s:g}"
        assert lines[at - 2].startswith("#EXTINF:")
    assert clock(85.0) == "1:25" and clock(3725.0) == "1:02:05"
    no_moment = index.search("song", None, 2, mode="text")
    assert "moment" not in format_table(no_moment) and "EXTVLCOPT" not in m3u_text(no_moment)


def test_ranker_is_rebuilt_from_the_changed_store_files_only(tmp_path: Path) -> None:
    base = collection(80, 28)
    first, rest = [int(t) for t in base.tracks[:40]], [int(t) for t in base.tracks[40:]]
    files = [
        write_windows_file(tmp_path / "000.parquet", base.subset(first)),
        write_windows_file(tmp_path / "001.parquet", base.subset(rest)),
    ]
    catalog_ids = np.array(sorted([*base.tracks.tolist(), 5_000]))

    def embed(texts: list[str]) -> np.ndarray:
        return queries(len(texts), 29)

    ranker = build_window_ranker(files, catalog_ids, "max", embed, ["Folk"])
    q = queries(1, 30)[0]
    # The second folder gains track 5,000: the query itself, in its second window.
    new = WindowEmbeddings(
        np.array([5_000, 5_000]),
        np.array([0.0, 5.0]),
        np.array([5.0, 10.0]),
        np.stack([-q, q]).astype(np.float32),
    )
    more = base.subset(rest)
    grown = WindowEmbeddings(
        np.r_[more.track_ids, new.track_ids],
        np.r_[more.start_s, new.start_s],
        np.r_[more.end_s, new.end_s],
        np.concatenate([more.embeddings, new.embeddings]),
    )
    write_windows_file(tmp_path / "001.parquet", grown)
    again = build_window_ranker(files, catalog_ids, "max", embed, ["Folk"], previous=ranker)
    assert again.index.segments[0] is ranker.index.segments[0]  # folder 000 not read again
    rows, scores = again.rank(q, 3)
    row = int(np.searchsorted(catalog_ids, 5_000))
    assert rows[0] == row and scores[0] == pytest.approx(1.0, abs=0.02)
    assert again.moment(row, q).start_s == 5.0
    assert ranker.from_catalog[row] == -1  # the old ranker did not have it
