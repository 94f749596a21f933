"""Search core and CLI: top-k against numpy brute force, the DuckDB table, output formats."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from clap_pipeline.cli import main
from clap_pipeline.dataset import audio_path
from clap_pipeline.model.choice import ModelChoice
from clap_pipeline.model.clap import load_clap
from clap_pipeline.search.build import write_track_embeddings
from clap_pipeline.search.engine import Result
from clap_pipeline.search.index import TABLE, SearchError, load_embeddings
from clap_pipeline.search.results import format_table, m3u_text, results_json
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline.search.vector_index import top_k
from clap_pipeline_tests.search_fixtures import track_rows, unit_rows, write_tracks_table
from clap_pipeline_tests.serve_fixtures import MOMENT_QUERY, Collection, write_window_store

TRACK_IDS = [2, 3, 5, 10, 20, 26, 30, 46, 48, 134, 1001, 1002]
TINY_DIM = 32  # projection_dim of the tiny CLAP


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    q = query / np.linalg.norm(query)
    return np.argsort(-(matrix @ q), kind="stable")[:k]


def test_top_k_equals_numpy_brute_force_including_ties() -> None:
    matrix = unit_rows(200, 16, seed=1)
    matrix[150] = matrix[7]  # exact ties: the lower row position must come first
    matrix[151] = matrix[7]
    rng = np.random.default_rng(2)
    for query in [*rng.standard_normal((5, 16)).astype(np.float32), matrix[7] * 3]:
        for k in (1, 3, 10, 199, 200, 500):
            positions, scores = top_k(matrix, query, k)
            expected = brute_force(matrix, query, k)
            np.testing.assert_array_equal(positions, expected)
            np.testing.assert_allclose(
                scores, matrix[expected] @ (query / np.linalg.norm(query)), rtol=1e-5
            )
            assert np.all(np.diff(scores) <= 0)
    positions, _ = top_k(matrix, matrix[7], 3)
    assert positions.tolist() == [7, 150, 151]
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(matrix, matrix[0], 0)
    with pytest.raises(ValueError, match="dimensions"):
        top_k(matrix, np.ones(8, np.float32), 3)


def make_data_dir(
    data_dir: Path,
    dim: int = TINY_DIM,
    version: str | None = "1",
    artists: dict[int, str] | None = None,
) -> np.ndarray:
    """A DuckDB with `tracks` and `track_embeddings` (rows in shuffled order); returns them.

    ``artists``: other artist names for some tracks.
    """
    duckdb_path = data_dir / "clap.duckdb"
    write_tracks_table(duckdb_path, TRACK_IDS)
    with duckdb.connect(str(duckdb_path)) as con:
        for tid, name in (artists or {}).items():
            con.execute("UPDATE tracks SET artist_name = ? WHERE track_id = ?", [name, tid])
    order = np.random.default_rng(3).permutation(len(TRACK_IDS))
    ids = np.array(TRACK_IDS, np.int64)[order]
    emb = unit_rows(len(ids), dim, seed=4)
    paths = [str(audio_path(data_dir / "fma_audio", t)) for t in ids]
    write_track_embeddings(
        duckdb_path, ids, emb, paths, np.full(len(ids), 960_000), ModelChoice("m", version, "r1")
    )
    by_id = dict(zip(ids.tolist(), emb, strict=True))
    return np.stack([by_id[t] for t in TRACK_IDS])


def test_table_schema_metadata_and_index_round_trip(tmp_path: Path) -> None:
    expected = make_data_dir(tmp_path)
    duckdb_path = tmp_path / "clap.duckdb"
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        columns = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ?",
                [TABLE],
            ).fetchall()
        )
        key = con.execute(
            "SELECT constraint_type FROM information_schema.table_constraints "
            "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
            [TABLE],
        ).fetchall()
        rows = con.execute(
            f"SELECT track_id, title, artist, genre, license, duration_s, model_version, "
            f"model_run_id FROM {TABLE} ORDER BY track_id"
        ).fetchall()
        assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0] == 2
    assert columns["embedding"] == f"FLOAT[{TINY_DIM}]" and columns["track_id"] == "BIGINT"
    assert key == [("PRIMARY KEY",)]
    for row, (tid, title, artist, genre, lic, duration, bit_rate) in zip(
        rows, track_rows(TRACK_IDS), strict=True
    ):
        # duration: file size x 8 / bit rate (the 30-s clip), else the metadata's duration.
        assert row == (
            tid,
            title,
            artist,
            genre,
            lic,
            960_000 * 8 / bit_rate if bit_rate > 0 else duration,
            "1",
            "r1",
        )

    index = load_embeddings(duckdb_path)
    assert index.track_ids.tolist() == TRACK_IDS
    assert index.matrix.dtype == np.float32 and index.matrix.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(index.matrix, expected)
    assert (index.model_version, index.model_run_id) == ("1", "r1")
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1 and "-v1-" in cached[0].name
    again = load_embeddings(duckdb_path)
    np.testing.assert_array_equal(again.matrix, expected)


def test_rebuild_replaces_table_and_cache_and_failed_rebuild_keeps_old(tmp_path: Path) -> None:
    make_data_dir(tmp_path, version="1")
    duckdb_path = tmp_path / "clap.duckdb"
    load_embeddings(duckdb_path)
    ids = np.array(TRACK_IDS[:4], np.int64)
    new = unit_rows(4, 8, seed=9)
    write_track_embeddings(
        duckdb_path, ids, new, ["/a"] * 4, np.zeros(4), ModelChoice("m", "2", "r2")
    )
    index = load_embeddings(duckdb_path)
    assert index.track_ids.tolist() == TRACK_IDS[:4] and index.model_version == "2"
    np.testing.assert_array_equal(index.matrix, new)
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").glob("*.npy")] == ["v2"]

    # A build that fails (duplicate track id) leaves version 2 in place, nothing half-written.
    with pytest.raises(duckdb.ConstraintException):
        write_track_embeddings(
            duckdb_path,
            np.array([5, 5]),
            unit_rows(2, 8),
            ["/b", "/c"],
            np.zeros(2),
            ModelChoice("m", "3", "r3"),
        )
    index = load_embeddings(duckdb_path)
    assert index.model_version == "2" and index.track_ids.tolist() == TRACK_IDS[:4]
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    assert sorted(tables) == [("track_embeddings",), ("tracks",)]  # no staging table left


def test_missing_database_or_table_names_the_asset(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="materialize the `track_embeddings` asset"):
        load_embeddings(tmp_path / "clap.duckdb")
    write_tracks_table(tmp_path / "clap.duckdb", TRACK_IDS)
    with pytest.raises(SearchError, match=r"no `track_embeddings` table.*materialize"):
        load_embeddings(tmp_path / "clap.duckdb")


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("CLAP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("FMA_AUDIO_DIR", "FMA_METADATA_DIR", "CLAP_MODEL"):
        monkeypatch.delenv(var, raising=False)
    data_dir.mkdir()
    return data_dir


def expected_order(tiny_model_dir: Path, matrix: np.ndarray, query: str) -> np.ndarray:
    q = encode_query(load_clap(tiny_model_dir), query)
    return np.array(TRACK_IDS)[brute_force(matrix, q, len(TRACK_IDS))]


def test_search_json_matches_brute_force_and_k_above_n_returns_all(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = make_data_dir(data_env)
    query = "folk country music"
    order = expected_order(tiny_model_dir, matrix, query)

    audio = ["--mode", "audio"]  # the audio ranking alone (hybrid: test_hybrid_*)
    assert main(["search", query, "-k", "5", "--model", str(tiny_model_dir), "--json", *audio]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["track_id"] for h in hits] == order[:5].tolist()
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    first = hits[0]
    assert first["title"] == f"Song {first['track_id']}"
    assert first["audio_path"] == str(audio_path(data_env / "fma_audio", first["track_id"]))
    assert all(-1.0 <= h["score"] <= 1.0 for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    assert (
        main(["search", query, "-k", "100", "--model", str(tiny_model_dir), "--json", *audio]) == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert [h["track_id"] for h in hits] == order.tolist()


def test_search_filters_rank_only_matching_tracks(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = make_data_dir(data_env)
    query = "folk country music"
    order = expected_order(tiny_model_dir, matrix, query).tolist()
    genre_of = {row[0]: row[3] for row in track_rows(TRACK_IDS)}
    base = [
        "search",
        query,
        "-k",
        "100",
        "--model",
        str(tiny_model_dir),
        "--json",
        "--mode",
        "audio",
    ]

    assert main([*base, "--genre", "folk"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["track_id"] for h in hits] == [t for t in order if genre_of[t] == "Folk"]
    assert main([*base, "--genre", "Folk", "--max-duration", "200", "-k", "1"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["track_id"] for h in hits] == [
        t for t in order if genre_of[t] == "Folk" and 180 + t <= 200
    ][:1]
    assert main([*base, "--license", "commercial-derivatives-ok"]) == 0  # "CC BY 4.0": all
    assert len(json.loads(capsys.readouterr().out)) == len(TRACK_IDS)
    assert main([*base, "--license", "public-domain"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*base, "--year-min", "2000"]) == 0  # this `tracks` table has no dates
    assert json.loads(capsys.readouterr().out) == []


def test_search_prints_aligned_table(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = make_data_dir(data_env)
    order = expected_order(tiny_model_dir, matrix, "warm guitar")
    args = ["search", "warm guitar", "-k", "3", "--model", str(tiny_model_dir), "--mode", "audio"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "title", "artist", "genre", "score"]
    assert len(lines) == 2 + 3
    assert len({len(line) for line in lines}) == 1  # score column right-aligned at one edge
    for line in lines:  # every column starts at the header's offset
        for name in ("title", "artist", "genre"):
            assert line[lines[0].index(name) - 1] == " "
    for rank, (line, tid) in enumerate(zip(lines[2:], order[:3], strict=True), start=1):
        assert line.split()[0] == str(rank)
        assert f"Song {tid}" in line and f"Artist {tid % 3}" in line
        float(line.split()[-1])


def test_empty_query_and_missing_embeddings_are_clear_errors(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "   ", "--model", str(tiny_model_dir)]) == 2
    assert "empty query" in capsys.readouterr().err
    assert main(["search", "jazz", "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "`track_embeddings`" in err and "materialize" in err
    make_data_dir(data_env, dim=16)
    assert main(["search", "jazz", "--model", str(tiny_model_dir)]) == 2
    assert "16-d embeddings" in capsys.readouterr().err


def test_playlist_writes_extended_m3u(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = make_data_dir(data_env)
    query = "warm lo-fi guitar"
    order = expected_order(tiny_model_dir, matrix, query)[:4]
    out = data_env / "lists" / "out.m3u"
    args = ["playlist", query, "-n", "4", "--m3u", str(out), "--model", str(tiny_model_dir)]
    args += ["--mode", "audio"]
    assert main(args) == 0
    assert "wrote 4 tracks" in capsys.readouterr().err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#EXTM3U" and len(lines) == 1 + 2 * 4
    meta = {row[0]: row for row in track_rows(TRACK_IDS)}
    for extinf, path, tid in zip(lines[1::2], lines[2::2], order.tolist(), strict=True):
        _, title, artist, _, _, duration, bit_rate = meta[tid]
        seconds = 30 if bit_rate > 0 else duration
        assert extinf == f"#EXTINF:{seconds},{artist} - {title}"
        assert Path(path).is_absolute()
        assert path == str(audio_path(data_env / "fma_audio", tid))
    assert [p.name for p in out.parent.iterdir()] == ["out.m3u"]  # no temp file left


def test_search_and_playlist_start_at_the_moment_with_window_embeddings(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = make_data_dir(data_env)
    write_window_store(Collection(data_env, TRACK_IDS, matrix), tiny_model_dir, moment_at_s=10)
    model = ["--model", str(tiny_model_dir), "--mode", "audio"]
    assert main(["search", MOMENT_QUERY, "-k", "3", *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "moment" and len(lines) == 2 + 3
    assert all(line.rstrip().endswith("at 0:10") for line in lines[2:])
    out = data_env / "moments.m3u"
    assert main(["playlist", MOMENT_QUERY, "-n", "3", "--m3u", str(out), *model]) == 0
    capsys.readouterr()
    assert out.read_text(encoding="utf-8").count("#EXTVLCOPT:start-time=10\n") == 3


def _playlist_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_playlist_refuses_targets_that_are_not_regular_files(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    make_data_dir(data_env)
    base = ["playlist", "folk", "-n", "2", "--model", str(tiny_model_dir), "--m3u"]
    target = data_env / "precious.txt"
    target.write_text("keep me")
    link = data_env / "link.m3u"
    link.symlink_to(target)
    err = _playlist_refused([*base, str(link)], capsys)
    assert "symbolic link" in err and str(target) in err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "keep me"

    fifo = data_env / "pipe.m3u"
    os.mkfifo(fifo)
    assert "not a regular file" in _playlist_refused([*base, str(fifo)], capsys)
    assert "a folder" in _playlist_refused([*base, str(data_env)], capsys)
    assert "--m3u is empty" in _playlist_refused([*base, ""], capsys)
    # An OSError while writing (the parent is a file) is one line too, naming the path.
    err = _playlist_refused([*base, str(target / "out.m3u")], capsys)
    assert f"error: {target}: File exists" in err  # mkdir of the parent folder
    assert target.read_text() == "keep me"
    # A regular file is replaced.
    ok = data_env / "ok.m3u"
    ok.write_text("old")
    assert main([*base, str(ok)]) == 0
    assert ok.read_text().startswith("#EXTM3U")


def test_control_characters_from_metadata_are_escaped() -> None:
    hit = Result(
        rank=1,
        track_id=2,
        title="Red\x1b[31m\x07 title\u202e",
        artist="A\x9b2J",
        genre="Rock\r\nX",
        score=0.5,
        genres=["Rock\x1b[0m"],
        year=None,
        license=None,
        duration_s=200.0,
        audio_path="/a/000/000002.mp3",
        file_duration_s=30.0,
    )
    for text in (format_table([hit]), results_json([hit]), m3u_text([hit])):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e\r"), text
    table = format_table([hit])
    assert "Red\\x1b[31m\\x07 title\\u202e" in table and "A\\x9b2J" in table
    assert json.loads(results_json([hit]))[0]["title"] == hit.title  # JSON keeps the value


def test_hybrid_and_text_modes_find_an_artist_by_name(
    data_env: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artist = [3, 20, 48, 1002]
    make_data_dir(data_env, artists=dict.fromkeys(artist, "Chad Crouch"))
    base = ["search", "Chad Crouch", "-k", "100", "--model", str(tiny_model_dir), "--json"]

    assert main([*base, "--mode", "text"]) == 0  # the names alone: only tracks that match
    hits = json.loads(capsys.readouterr().out)
    assert {h["track_id"] for h in hits} == set(artist) and all(h["score"] > 0 for h in hits)

    assert main(base) == 0  # hybrid (the default): the artist's tracks first, then the rest
    hits = json.loads(capsys.readouterr().out)
    assert {h["track_id"] for h in hits[: len(artist)]} == set(artist)
    assert len(hits) == len(TRACK_IDS)  # the audio ranking still brings every track

    assert main([*base, "--genre", "Rock"]) == 0  # filters hold in every mode
    rock = {r[0] for r in track_rows(TRACK_IDS) if r[3] == "Rock"}
    hits = json.loads(capsys.readouterr().out)
    assert {h["track_id"] for h in hits} == rock
    assert hits[0]["track_id"] in set(artist) & rock  # the artist's Rock track first
    assert main([*base, "--mode", "text", "--genre", "Rock"]) == 0
    assert {h["track_id"] for h in json.loads(capsys.readouterr().out)} == set(artist) & rock
    assert main([*base, "--mode", "text", "-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_fusion_adds_reciprocal_ranks() -> None:
    from clap_pipeline.search.engine import RRF_K, fuse

    audio = (np.array([7, 3, 5]), np.array([0.9, 0.8, 0.7]))
    text = (np.array([5, 9]), np.array([4.0, 1.0]))
    positions, scores = fuse([audio, text], 10)
    assert positions.tolist() == [5, 7, 3, 9]  # 5 is in both lists
    assert scores[0] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert scores[1] == pytest.approx(1 / (RRF_K + 1))
    assert fuse([audio, text], 2)[0].tolist() == [5, 7]
    assert fuse([audio, (np.array([], np.int64), np.array([]))], 3)[0].tolist() == [7, 3, 5]
    weighted, scores = fuse([audio, text], 10, [1.0, 2.0])  # the names count twice
    assert weighted.tolist() == [5, 9, 7, 3]
    assert scores[1] == pytest.approx(2 / (RRF_K + 2))
