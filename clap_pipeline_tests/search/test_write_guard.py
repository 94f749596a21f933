"""Writes that cannot poison training: the feedback token, the rate limit, one row per client."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from clap_pipeline.cli import main
from clap_pipeline.config import ConfigError, ServeSettings
from clap_pipeline.search.write_guard import (
    RateLimiter,
    check_listen,
    client_key,
    is_loopback,
    token_matches,
)
from clap_pipeline.storage import duckdb_connection
from clap_pipeline_tests.serve_fixtures import free_port, make_collection, running_server

TOKEN = "s3cret-token-of-the-test"


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    check_listen("127.0.0.1", None)
    check_listen("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="beyond loopback: set CLAP_SERVE_TOKEN"):
        check_listen("0.0.0.0", None)


def test_token_setting_is_checked_and_never_echoed() -> None:
    assert ServeSettings.from_env({"CLAP_SERVE_TOKEN": TOKEN}).token == TOKEN
    with pytest.raises(ConfigError, match="at least 16 characters, got 5") as err:
        ServeSettings.from_env({"CLAP_SERVE_TOKEN": "short"})
    assert "short" not in str(err.value)
    assert TOKEN not in repr(ServeSettings(token=TOKEN))
    with pytest.raises(ConfigError, match="CLAP_FEEDBACK_PER_MINUTE must be >= 1"):
        ServeSettings.from_env({"CLAP_FEEDBACK_PER_MINUTE": "0"})


def test_bearer_token_comparison() -> None:
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and token_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not token_matches(header, TOKEN), header
    assert client_key("10.0.0.1") == client_key("10.0.0.1") != client_key("10.0.0.2")
    assert "10.0.0.1" not in client_key("10.0.0.1")


def test_rate_limit_per_client_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # one token every 10 s, bursts of 6
    assert [limiter.acquire("a") for _ in range(6)] == [None] * 6
    wait = limiter.acquire("a")
    assert wait is not None and 9.9 < wait <= 10.0
    assert limiter.acquire("b") is None  # another client has its own bucket
    now[0] = 10.0
    assert limiter.acquire("a") is None and limiter.acquire("a") is not None


def test_serve_refuses_a_public_address_without_a_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLAP_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "clap-pipeline serve: error: --host 0.0.0.0 listens beyond loopback" in err
    assert len(err.strip().splitlines()) == 1


def test_feedback_needs_the_token_is_rate_limited_and_deduplicated(
    tmp_path: Path, tiny_model_dir: Path, ffmpeg: str
) -> None:
    collection = make_collection(tmp_path / "data", ffmpeg)
    env = {
        "CLAP_SERVE_TOKEN": TOKEN,
        "CLAP_FEEDBACK_PER_MINUTE": "7",
        "CLAP_FEEDBACK_QUEUE": "1",
        "CLAP_MAX_UPLOAD_MB": "0.1",
        "CLAP_UPLOAD_TIMEOUT_S": "0.001",
    }
    body = {"query": "warm guitar", "track_id": 5, "relevant": True}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        running_server(collection, tiny_model_dir, host="0.0.0.0", env=env) as base,
        httpx.Client(base_url=base) as http,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            refused = http.post("/api/feedback", json=body, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            (error,) = refused.json()["detail"]
            assert set(error) == {"loc", "msg", "type"}
        assert http.get("/api/search", params={"q": "jazz"}).status_code == 200  # reads: open
        assert_full_queue_is_503(base, collection.duckdb_path, auth)  # 3 posts

        first = http.post("/api/feedback", json=body, headers=auth)
        assert first.status_code == 201 and first.json()["change"] == "added"
        again = http.post("/api/feedback", json={**body, "query": " WARM guitar"}, headers=auth)
        assert again.status_code == 200 and again.json()["change"] == "unchanged"
        flipped = http.post("/api/feedback", json={**body, "relevant": False}, headers=auth)
        assert flipped.status_code == 200 and flipped.json()["change"] == "replaced"
        assert http.post("/api/feedback", json={**body, "track_id": 10}, headers=auth).is_success
        limited = http.post("/api/feedback", json={**body, "track_id": 20}, headers=auth)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        schema = http.get("/openapi.json").json()
        assert "HTTPBearer" in schema["components"]["securitySchemes"]

        # The upload limits come from the same settings (CLAP_MAX_UPLOAD_MB, ..._TIMEOUT_S).
        clip = collection.clip(5).read_bytes()
        assert 40_000 < len(clip) < 100_000  # a 3-s MP3 at 128 kb/s
        slow = http.post("/api/search/audio", content=clip, headers={"Content-Type": "audio/mpeg"})
        assert slow.status_code == 422 and slow.json()["detail"][0]["type"] == "audio_timeout"
        big = http.post(
            "/api/search/audio", content=clip * 3, headers={"Content-Type": "audio/mpeg"}
        )
        assert big.status_code == 413
    with duckdb.connect(str(collection.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "SELECT track_id, relevant, client FROM search_feedback "
            "WHERE query = 'warm guitar' ORDER BY track_id"
        ).fetchall()
    assert [(t, r) for t, r, _ in rows] == [(5, False), (10, True)]
    assert rows[0][2] == client_key("127.0.0.1")


def assert_full_queue_is_503(base: str, duckdb_path: Path, auth: dict[str, str]) -> None:
    """With CLAP_FEEDBACK_QUEUE=1: one post being written, one waiting, the next gets 503."""

    def post(query: str) -> httpx.Response:
        body = {"query": query, "track_id": 5, "relevant": True}
        return httpx.post(f"{base}/api/feedback", json=body, headers=auth, timeout=60)

    def wait_until(stat: str, value: int) -> None:
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/api/health").json()["feedback"][stat] != value:
            assert time.monotonic() < deadline, f"feedback writer never had {stat} = {value}"
            time.sleep(0.05)

    pool = concurrent.futures.ThreadPoolExecutor(2)
    with duckdb_connection(duckdb_path):  # another process writes: the writer waits its turn
        writing = pool.submit(post, "held while writing")
        wait_until("writing", 1)
        queued = pool.submit(post, "held in the queue")
        wait_until("queued", 1)
        full = post("one too many")
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        (error,) = full.json()["detail"]
        assert error["type"] == "busy" and "1 feedback posts are waiting" in error["msg"]
        assert not writing.done() and not queued.done()  # not answered before the commit
    assert [writing.result().status_code, queued.result().status_code] == [201, 201]
    pool.shutdown()
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        rows = con.execute("SELECT query FROM search_feedback ORDER BY query").fetchall()
    assert rows == [("held in the queue",), ("held while writing",)]
