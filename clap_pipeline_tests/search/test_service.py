"""The search service over HTTP: a real `clap-pipeline serve` process on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest

from clap_pipeline import run_names, tracking
from clap_pipeline.cli import build_parser
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL
from clap_pipeline.model.clap import load_clap
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline_tests.search_fixtures import GENRES, unit_rows
from clap_pipeline_tests.serve_fixtures import (
    EXTRA_GENRES,
    GENRE_TITLES,
    HOSTILE_ID,
    HOSTILE_TITLE,
    MOMENT_QUERY,
    TINY_DIM,
    TRACK_IDS,
    Collection,
    free_port,
    make_collection,
    running_server,
    track_license,
    track_year,
    write_embeddings,
    write_window_store,
)

FIELDS = {
    *("rank", "track_id", "title", "artist", "genre", "score", "audio_url"),
    *("genres", "year", "license", "duration_s"),
    *("start_s", "end_s", "moment_score", "timeline"),  # null without window embeddings
}


def exact_order(matrix: np.ndarray, query: np.ndarray) -> list[int]:
    q = query / np.linalg.norm(query)
    return np.array(TRACK_IDS)[np.argsort(-(matrix @ q), kind="stable")].tolist()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ffmpeg: str
) -> Iterator[tuple[Collection, httpx.Client]]:
    collection = make_collection(tmp_path_factory.mktemp("serve") / "data", ffmpeg)
    with running_server(collection, tiny_model_dir) as base, httpx.Client(base_url=base) as http:
        yield collection, http


def test_serve_binds_loopback_by_default() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_health_reports_model_and_tracks(served: tuple[Collection, httpx.Client]) -> None:
    _, http = served
    body = http.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["model_version"] == "1" and body["tracks"] == len(TRACK_IDS)
    assert body["dim"] == TINY_DIM and body["index"]["kind"] == "exact"


def test_search_returns_ranked_fields_in_exact_order(
    served: tuple[Collection, httpx.Client], tiny_model_dir: Path
) -> None:
    collection, http = served
    query = "folk country music"
    response = http.get("/api/search", params={"q": query, "k": 5, "mode": "audio"})
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    hits = response.json()
    assert len(hits) == 5 and all(set(h) == FIELDS for h in hits)
    expected = exact_order(collection.matrix, encode_query(load_clap(tiny_model_dir), query))
    assert [h["track_id"] for h in hits] == expected[:5]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    first = hits[0]
    assert first["audio_url"] == f"/api/tracks/{first['track_id']}/audio"
    assert first["artist"] == f"Artist {first['track_id'] % 3}"
    all_hits = http.get("/api/search", params={"q": query, "k": 100, "mode": "audio"}).json()
    assert [h["track_id"] for h in all_hits] == expected  # k above N: every track
    hostile = next(h for h in all_hits if h["track_id"] == HOSTILE_ID)
    assert hostile["title"] == HOSTILE_TITLE  # JSON carries it verbatim; the page escapes


def test_filters_return_only_matching_tracks_in_ranked_order(
    served: tuple[Collection, httpx.Client], tiny_model_dir: Path
) -> None:
    collection, http = served
    query = "folk music"
    order = exact_order(collection.matrix, encode_query(load_clap(tiny_model_dir), query))

    def ids(k: int = 100, **filters: object) -> list[int]:
        response = http.get("/api/search", params={"q": query, "k": k, "mode": "audio", **filters})
        assert response.status_code == 200, response.text
        return [h["track_id"] for h in response.json()]

    # Folk: the top genre (search_fixtures cycles GENRES) or a sub-genre (EXTRA_GENRES).
    top = {tid: GENRES[i % len(GENRES)] for i, tid in enumerate(TRACK_IDS)}
    folk = [t for t in order if top[t] == "Folk" or 17 in EXTRA_GENRES.get(t, [])]
    assert GENRE_TITLES[17] == "Folk" and len(folk) >= 4
    assert ids(genre="Folk") == folk  # ranked among themselves, nothing else
    assert ids(k=2, genre="folk") == folk[:2]  # k filtered results when k match
    hits = http.get("/api/search", params={"q": query, "k": 100, "genre": "Folk"}).json()
    assert all("Folk" in h["genres"] for h in hits)
    commercial = [t for t in order if "NonCommercial" not in track_license(t)]
    assert ids(license="commercial-ok") == commercial
    assert ids(license="public-domain") == [t for t in order if track_license(t).startswith("CC0")]
    assert ids(license="attribution 4.0 international") == [
        t for t in order if track_license(t) == "Attribution 4.0 International"
    ]
    years = [t for t in order if (y := track_year(t)) is not None and 2010 <= y <= 2013]
    assert ids(year_min=2010, year_max=2013) == years
    assert ids(year_min=2013, year_max=2010) == []
    assert ids(max_duration=200) == [t for t in order if 180 + t <= 200]  # fixture durations
    assert ids(genre="Polka") == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": "", "k": 5}, "at least 1 character"),
        ({"q": "   ", "k": 5}, "should match pattern"),
        ({"q": "x" * 1001, "k": 5}, "at most 1000 characters"),
        ({"q": "jazz", "k": 0}, "greater than or equal to 1"),
        ({"q": "jazz", "k": 101}, "less than or equal to 100"),
        ({"q": "jazz", "k": "many"}, "integer"),
        ({"k": 5}, "Field required"),
    ],
)
def test_bad_query_or_k_is_a_4xx_with_a_message(
    served: tuple[Collection, httpx.Client], params: dict, message: str
) -> None:
    response = served[1].get("/api/search", params=params)
    assert response.status_code == 422
    (error,) = response.json()["detail"]  # one error shape: a list of {loc, msg, type}
    assert set(error) == {"loc", "msg", "type"} and message in error["msg"], error


def test_long_query_at_the_limit_is_accepted(served: tuple[Collection, httpx.Client]) -> None:
    response = served[1].get("/api/search", params={"q": "x" * 1000, "k": 1})
    assert response.status_code == 200 and len(response.json()) == 1


def test_similar_returns_audio_neighbours_without_the_track(
    served: tuple[Collection, httpx.Client],
) -> None:
    collection, http = served
    track = TRACK_IDS[3]
    hits = http.get(f"/api/tracks/{track}/similar", params={"k": 4}).json()
    expected = [t for t in exact_order(collection.matrix, collection.matrix[3]) if t != track]
    assert [h["track_id"] for h in hits] == expected[:4]
    assert all(set(h) == FIELDS for h in hits)
    assert http.get("/api/tracks/999999/similar").status_code == 404
    assert http.get(f"/api/tracks/{track}/similar", params={"k": 0}).status_code == 422


def test_audio_serves_the_clip_with_range_requests(
    served: tuple[Collection, httpx.Client],
) -> None:
    collection, http = served
    data = collection.clip(TRACK_IDS[0]).read_bytes()
    whole = http.get(f"/api/tracks/{TRACK_IDS[0]}/audio")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/mpeg"
    assert whole.headers["accept-ranges"] == "bytes"
    part = http.get(f"/api/tracks/{TRACK_IDS[0]}/audio", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = http.get(f"/api/tracks/{TRACK_IDS[0]}/audio", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert http.get("/api/tracks/999999/audio").status_code == 404
    # Only indexed ids: anything path-like is not a track id.
    assert http.get("/api/tracks/..%2F..%2Fetc%2Fpasswd/audio").status_code in (404, 422)


def test_feedback_is_stored_and_readable_while_the_server_runs(
    served: tuple[Collection, httpx.Client],
) -> None:
    collection, http = served
    posted = http.post(
        "/api/feedback", json={"query": "  warm guitar ", "track_id": 5, "relevant": True}
    )
    assert posted.status_code == 201, posted.text
    assert http.post(
        "/api/feedback", json={"query": "warm guitar", "track_id": 10, "relevant": False}
    ).is_success
    # Another process's view: a plain read-only connection while the server keeps running.
    with duckdb.connect(str(collection.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "SELECT query, track_id, relevant, model_version, created_at IS NOT NULL "
            "FROM search_feedback WHERE query = 'warm guitar' ORDER BY created_at"
        ).fetchall()
    assert rows == [("warm guitar", 5, True, "1", True), ("warm guitar", 10, False, "1", True)]
    bad = [
        {"query": "x", "track_id": 999999, "relevant": True},
        {"query": " ", "track_id": 5, "relevant": True},
        {"query": "x", "track_id": 5},
        {"query": "x", "track_id": "five", "relevant": True},
    ]
    assert [http.post("/api/feedback", json=b).status_code for b in bad] == [404, 422, 422, 422]
    assert http.get("/api/health").status_code == 200  # still serving


def test_rebuilt_index_is_swapped_in_without_a_failed_request(
    tmp_path: Path, tiny_model_dir: Path, ffmpeg: str
) -> None:
    collection = make_collection(tmp_path / "data", ffmpeg)
    statuses: list[int] = []
    seen_ids: list[set[int]] = []
    stop = threading.Event()

    with running_server(collection, tiny_model_dir, poll_s=0.2) as base:

        def hammer() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    response = client.get("/api/search", params={"q": "jazz", "k": 100})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        seen_ids.append({h["track_id"] for h in response.json()})

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(1.0)
            new_ids = TRACK_IDS[:5]
            write_embeddings(collection, new_ids, unit_rows(5, TINY_DIM, seed=11), "2")
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=base) as http:
                while http.get("/api/health").json()["swaps"] < 1:
                    assert time.monotonic() < deadline, "the server did not swap within 60 s"
                    time.sleep(0.2)
                health = http.get("/api/health").json()
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join(timeout=60)
    assert health["tracks"] == 5 and health["model_version"] == "2"
    assert health["last_refresh_error"] is None
    assert statuses and set(statuses) == {200}, f"non-200 during the swap: {set(statuses)}"
    # Every answer came whole from one index: the old 12 tracks or the new 5.
    assert {frozenset(s) for s in seen_ids} == {frozenset(TRACK_IDS), frozenset(new_ids)}
    assert seen_ids[-1] == set(new_ids)


def wait_for_swaps(http: httpx.Client, swaps: int, timeout_s: float = 60) -> dict:
    """/api/health once the service has swapped ``swaps`` times."""
    deadline = time.monotonic() + timeout_s
    while (health := http.get("/api/health").json())["swaps"] < swaps:
        assert time.monotonic() < deadline, f"the server did not swap within {timeout_s} s"
        time.sleep(0.2)
    return health


def moments_of(http: httpx.Client) -> list[float | None]:
    hits = http.get("/api/search", params={"q": MOMENT_QUERY, "k": 5, "mode": "audio"}).json()
    return [h["start_s"] for h in hits]


def test_window_embeddings_are_indexed_and_reindexed_while_serving(
    tmp_path: Path, tiny_model_dir: Path, ffmpeg: str
) -> None:
    collection = make_collection(tmp_path / "data", ffmpeg)
    statuses: list[int] = []
    stop = threading.Event()
    with running_server(collection, tiny_model_dir, poll_s=0.2) as base:
        http = httpx.Client(base_url=base, timeout=30)

        def hammer() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    statuses.append(client.get("/api/search", params={"q": "jazz"}).status_code)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            assert moments_of(http) == [None] * 5  # no window store yet: no moments
            write_window_store(collection, tiny_model_dir, moment_at_s=10.0, rule="max")
            windows = wait_for_swaps(http, 1)["windows"]
            assert moments_of(http) == [10.0] * 5
            hit = http.get("/api/search", params={"q": MOMENT_QUERY, "k": 1}).json()[0]
            assert hit["end_s"] == 15.0 and hit["timeline"]["start_s"] == [0.0, 5.0, 10.0]
            like = http.get(f"/api/tracks/{hit['track_id']}/similar", params={"start_s": 12})
            assert like.status_code == 200 and hit["track_id"] not in [
                h["track_id"] for h in like.json()
            ]
            # Like the moment at 10-15 s: every track's closest window is its own at 10 s.
            assert [h["start_s"] for h in like.json()] == [10.0] * len(like.json())
            # Both store files are written again, the moment now at 5 s: the index reads
            # them into new segments beside the old one (no rebuild from scratch).
            write_window_store(collection, tiny_model_dir, moment_at_s=5.0, rule="max")
            again = wait_for_swaps(http, 2)["windows"]
            assert moments_of(http) == [5.0] * 5
        finally:
            stop.set()
            thread.join(timeout=60)
            http.close()
    assert (windows["rule"], windows["tracks"], windows["windows"]) == ("max", 12, 36)
    assert windows["segments"] == 1 and again["segments"] == 3 and again["tracks"] == 12
    assert statuses and set(statuses) == {200}, f"non-200 during the swaps: {set(statuses)}"


def register_tiny(store: str, model_dir: Path, epoch: int) -> str:
    """A registry version of ``clap-fma`` backed by a local tiny-CLAP folder."""

    mlflow_client = tracking.client(store)
    run_id = mlflow_client.create_run(tracking.configure(store, "serve-test")).info.run_id
    tags = {
        run_names.VERSION_CHECKPOINT_TAG: str(model_dir),
        run_names.VERSION_EPOCH_TAG: str(epoch),
    }
    return tracking.register_checkpoint(
        mlflow_client, DEFAULT_REGISTERED_MODEL, run_id=run_id, source=str(model_dir), tags=tags
    )


def test_champion_alias_is_served_once_its_embeddings_are_built(
    tmp_path: Path, tiny_model_dir: Path, ffmpeg: str
) -> None:
    from clap_pipeline.model.tiny import save_tiny_model
    from clap_pipeline_tests.training_fixtures import mlflow_store

    collection = make_collection(tmp_path / "data", ffmpeg)
    store = mlflow_store(collection.data_dir)  # where running_server points MLFLOW_TRACKING_URI
    v1 = register_tiny(store, tiny_model_dir, 1)
    mlflow_client = tracking.client(store)
    mlflow_client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, tracking.CHAMPION, v1)
    other_model = save_tiny_model(tmp_path / "tiny-2", seed=1)

    with running_server(collection, None, poll_s=0.2) as base, httpx.Client(base_url=base) as http:
        health = http.get("/api/health").json()
        assert (health["model_version"], health["champion_version"]) == ("1", "1")
        assert health["model"] == f"models:/{DEFAULT_REGISTERED_MODEL}/1"
        assert health["note"] is None

        # The alias moves before `track_embeddings` is rebuilt: keep serving version 1.
        v2 = register_tiny(store, other_model, 2)
        mlflow_client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, tracking.CHAMPION, v2)
        deadline = time.monotonic() + 60
        while http.get("/api/health").json()["champion_version"] != "2":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        health = http.get("/api/health").json()
        assert health["model_version"] == "1" and "materialize `track_embeddings`" in health["note"]
        assert http.get("/api/search", params={"q": "jazz", "k": 3}).status_code == 200

        # Version 2's embeddings arrive: the server swaps model and index together.
        write_embeddings(collection, TRACK_IDS, unit_rows(len(TRACK_IDS), TINY_DIM, 8), "2")
        while http.get("/api/health").json()["model_version"] != "2":
            assert time.monotonic() < deadline, "no swap to version 2 within 60 s"
            time.sleep(0.2)
        health = http.get("/api/health").json()
        assert health["model"] == f"models:/{DEFAULT_REGISTERED_MODEL}/2" and health["note"] is None
        response = http.get("/api/search", params={"q": "jazz", "k": 3, "mode": "audio"})
    assert response.headers["x-model-version"] == "2"
    query = encode_query(load_clap(other_model), "jazz")
    expected = exact_order(unit_rows(len(TRACK_IDS), TINY_DIM, 8), query)
    assert [h["track_id"] for h in response.json()] == expected[:3]


def test_serve_without_an_index_exits_with_what_to_materialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clap_pipeline.cli import main

    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["serve", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "clap-pipeline serve: error" in err and "materialize the `track_embeddings`" in err
