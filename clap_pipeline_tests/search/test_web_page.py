"""The web page in headless Chromium (Debian's `chromium`, driven by Playwright's Python API).

Playwright's own browser download is not used: the test launches the system Chromium at
``CHROMIUM``; `.ci/run` installs it with apt. Without that binary the test is skipped
and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from clap_pipeline_tests.serve_fixtures import (
    HOSTILE_ID,
    HOSTILE_TITLE,
    MOMENT_QUERY,
    TRACK_IDS,
    Collection,
    make_collection,
    running_server,
    write_window_store,
)

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 30_000
CLIP_S = 16.0  # three 5-s windows of every track have window embeddings
MOMENT_AT_S = 10.0  # where MOMENT_QUERY is heard in every track
PLAYER_SRC = re.compile(r"/api/tracks/\d+/audio(#t=[0-9.]+)?")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (as .ci/run does)",
)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ffmpeg: str
) -> Iterator[tuple[Collection, str]]:
    collection = make_collection(tmp_path_factory.mktemp("page") / "data", ffmpeg, clip_s=CLIP_S)
    write_window_store(collection, tiny_model_dir, moment_at_s=MOMENT_AT_S)
    with running_server(collection, tiny_model_dir) as base:
        yield collection, base


@pytest.fixture
def page(site: tuple[Collection, str]):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            problems: list[str] = []  # console errors, page errors, failed responses
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "response",
                lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
            )
            page.problems = problems
            page.goto(site[1] + "/")
            yield page
        finally:
            browser.close()


def search(page, query: str, k: str) -> None:
    page.fill("#q", query)
    page.select_option("#k", k)
    page.click("button[type=submit]")
    page.wait_for_selector("li.result")


def test_search_shows_players_with_a_seekable_source(page, site) -> None:
    _, base = site
    audio_responses: list[tuple[str, int, str | None]] = []
    page.on(
        "response",
        lambda r: (
            audio_responses.append((r.url, r.status, r.request.headers.get("range")))
            if "/audio" in r.url
            else None
        ),
    )
    search(page, "folk country music", "5")
    assert page.locator("li.result").count() == 5
    assert page.locator("#status").text_content() == "5 results for “folk country music”"
    players = page.locator("li.result audio")
    assert players.count() >= 3
    srcs = [players.nth(i).get_attribute("src") for i in range(players.count())]
    assert all(s and PLAYER_SRC.fullmatch(s) for s in srcs)
    # The browser loads the clip's metadata: it decodes it (duration of the 16-s tone).
    page.wait_for_function(
        "() => [...document.querySelectorAll('li.result audio')].every(a => a.readyState >= 1)"
    )
    duration = page.evaluate("document.querySelector('li.result audio').duration")
    assert CLIP_S - 0.5 < duration < CLIP_S + 0.5
    # Seeking: the player's source answers a Range request with 206.
    with httpx.Client(base_url=base) as http:
        part = http.get(srcs[0].split("#")[0], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and len(part.content) == 1000
    assert any(status in (200, 206) for _, status, _ in audio_responses)


def test_metadata_is_rendered_as_text(page) -> None:
    search(page, "music", "20")
    assert page.locator("li.result").count() == len(TRACK_IDS)
    item = page.locator(f"li.result[data-track-id='{HOSTILE_ID}']")
    assert item.locator(".title").text_content() == HOSTILE_TITLE  # shown literally
    assert item.locator(".title b, .title img").count() == 0
    assert page.evaluate("window.__xss === undefined")


def test_thumbs_up_stores_a_feedback_row(page, site) -> None:
    collection, _ = site
    search(page, "slow piano", "5")
    first = page.locator("li.result").first
    track_id = int(first.get_attribute("data-track-id"))
    first.locator("button.up").click()
    page.wait_for_function(
        "() => document.querySelector('li.result .feedback-status').textContent"
        " === 'saved: relevant'"
    )
    page.locator("li.result").nth(1).locator("button.down").click()
    page.wait_for_selector("li.result:nth-child(2) .feedback-status.saved")
    second = int(page.locator("li.result").nth(1).get_attribute("data-track-id"))
    with duckdb.connect(str(collection.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "SELECT track_id, relevant, model_version FROM search_feedback "
            "WHERE query = 'slow piano' ORDER BY created_at"
        ).fetchall()
    assert rows == [(track_id, True, "1"), (second, False, "1")]


def test_a_chosen_audio_file_is_the_query(page, site) -> None:
    collection, base = site
    clip = collection.clip(collection.track_ids[0])
    page.select_option("#k", "5")
    page.set_input_files("#audio-file", str(clip))  # what a drop does, through the input
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('sound like')"
    )
    shown = [
        int(page.locator("li.result").nth(i).get_attribute("data-track-id"))
        for i in range(page.locator("li.result").count())
    ]
    with httpx.Client(base_url=base) as http:
        expected = http.post(
            "/api/search/audio",
            params={"k": 5},
            content=clip.read_bytes(),
            headers={"Content-Type": "audio/mpeg"},
        ).json()
    assert shown == [h["track_id"] for h in expected] and len(shown) == 5
    assert page.locator("li.result button.up").count() == 0  # verdicts only on text queries
    assert page.problems == []


def test_more_like_this_lists_neighbours(page) -> None:
    search(page, "rock", "5")
    first = page.locator("li.result").first
    track_id = first.get_attribute("data-track-id")
    first.locator("button.more").click()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('sound like')"
    )
    ids = [
        page.locator("li.result").nth(i).get_attribute("data-track-id")
        for i in range(page.locator("li.result").count())
    ]
    assert len(ids) == 5 and track_id not in ids
    assert page.locator("li.result button.up").count() == 0  # verdicts only on text queries
    assert page.locator("li.result audio").count() == 5


def test_filters_narrow_the_results_and_nothing_fails(page, site) -> None:
    _, base = site
    page.fill("#genre", "Folk")
    page.select_option("#license", "commercial-ok")
    search(page, "folk music", "20")
    shown = [
        int(page.locator("li.result").nth(i).get_attribute("data-track-id"))
        for i in range(page.locator("li.result").count())
    ]
    params = {"q": "folk music", "k": 20, "genre": "Folk", "license": "commercial-ok"}
    with httpx.Client(base_url=base) as http:
        expected = http.get("/api/search", params=params).json()
    assert shown == [h["track_id"] for h in expected] and 0 < len(shown) < len(TRACK_IDS)
    assert all("Folk" in h["genres"] and "NonCommercial" not in h["license"] for h in expected)
    assert "matching the filters" in page.locator("#status").text_content()
    page.fill("#genre", "")
    page.select_option("#license", "")
    page.fill("#year_min", "2010")
    page.fill("#year_max", "2012")
    page.click("button[type=submit]")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('3 ')")
    years = page.locator("li.result .year").all_text_contents()
    assert sorted(years) == [", 2010", ", 2011", ", 2012"]
    assert page.problems == []  # no console error, no request that failed (favicon included)


def test_thumbs_are_drawn_icons_and_one_clip_plays_at_a_time(page) -> None:
    search(page, "warm guitar", "5")
    up = page.locator("li.result button.up").first
    assert up.text_content().strip() == ""  # no emoji or other text glyph
    assert up.locator("svg path").count() == 2  # drawn as vector paths: no font needed
    box = up.locator("svg").bounding_box()
    assert box is not None and box["width"] >= 12 and box["height"] >= 12
    assert page.locator("link[rel=icon]").get_attribute("href").startswith("data:image/svg")
    page.wait_for_function(
        "() => [...document.querySelectorAll('li.result audio')].every(a => a.readyState >= 1)"
    )
    page.evaluate("document.querySelectorAll('li.result audio')[0].play()")
    page.wait_for_function("() => !document.querySelectorAll('li.result audio')[0].paused")
    page.evaluate("document.querySelectorAll('li.result audio')[1].play()")
    page.wait_for_function("() => !document.querySelectorAll('li.result audio')[1].paused")
    paused = page.evaluate("[...document.querySelectorAll('li.result audio')].map(a => a.paused)")
    assert paused == [True, False, True, True, True]
    assert page.problems == []


def test_the_player_starts_at_the_moment_and_more_like_it_asks_for_it(page, site) -> None:
    _, base = site
    search(page, MOMENT_QUERY, "5")
    with httpx.Client(base_url=base) as http:
        expected = http.get("/api/search", params={"q": MOMENT_QUERY, "k": 5}).json()
    first = page.locator("li.result").first
    assert first.get_attribute("data-track-id") == str(expected[0]["track_id"])
    start_s = expected[0]["start_s"]
    assert start_s == MOMENT_AT_S and expected[0]["end_s"] == MOMENT_AT_S + 5
    assert first.locator(".moment").text_content() == "best match at 0:10–0:15"
    assert first.locator(".timeline rect").count() == 3
    assert first.locator(".timeline rect.best").count() == 1
    page.evaluate("document.querySelector('li.result audio').play()")
    page.wait_for_function(
        "() => { const a = document.querySelector('li.result audio');"
        " return !a.paused && a.currentTime > 0; }"
    )
    at = page.evaluate("document.querySelector('li.result audio').currentTime")
    assert start_s <= at < start_s + 2.0, f"the player started at {at} s, not at {start_s} s"
    more = first.locator("button.more-moment")
    assert more.text_content() == "more like 0:10"
    with page.expect_response(lambda r: "/similar" in r.url) as answer:
        more.click()
    assert answer.value.status == 200 and "start_s=10" in answer.value.url
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('sound like')"
    )
    assert "at 0:10" in page.locator("#status").text_content()
    shown = page.locator("li.result")
    ids = [shown.nth(i).get_attribute("data-track-id") for i in range(shown.count())]
    with httpx.Client(base_url=base) as http:
        similar = http.get(
            f"/api/tracks/{expected[0]['track_id']}/similar", params={"k": 5, "start_s": start_s}
        ).json()
    assert ids == [str(h["track_id"]) for h in similar] and len(ids) == 5
    assert str(expected[0]["track_id"]) not in ids
    assert page.problems == []
