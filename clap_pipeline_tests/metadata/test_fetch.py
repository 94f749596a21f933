"""`clap-pipeline fetch-fma` against a local HTTP server serving FMA-shaped BZIP2 zips.

The server (``http.server`` on 127.0.0.1, a free port) honours Range requests
and can misbehave on demand: drop the connection after K bytes, ignore Range,
answer 416. Every request's Range header is recorded so the tests can assert
that a download resumed from the bytes on disk instead of starting over.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clap_pipeline.cli import main as cli_main
from clap_pipeline.metadata import fetch
from clap_pipeline.metadata.fetch import (
    ChecksumError,
    FetchError,
    extract_clips,
    fetch_fma,
    parse_checksums,
)
from clap_pipeline.progress import DownloadProgress

TRACKS_CSV = (
    b",album,artist,set,set,track,track\n"
    b",title,name,split,subset,genre_top,title\n"
    b"track_id,,,,,,\n"
    b"2,AWOL - A Way Of Life,AWOL,training,small,Hip-Hop,Food\n"
    b'5,AWOL - A Way Of Life,AWOL,training,small,Hip-Hop,"This, ""World"""\n'
)
GENRES_CSV = b"genre_id,#tracks,parent,title,top_level\n21,8389,0,Hip-Hop,21\n"
# Unsorted on purpose: `limit` must pick the smallest ids, not the first members.
CLIP_IDS = (1039, 5, 2, 140, 10)


def fake_clip(track_id: int) -> bytes:
    """An ID3-headed blob of a few KiB, different per track (extraction never decodes it)."""
    rng = random.Random(track_id)
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.randbytes(2048 + 97 * track_id % 5000)


def clip_rel(track_id: int) -> str:
    tid = f"{track_id:06d}"
    return f"{tid[:3]}/{tid}.mp3"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _bzip2_zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_BZIP2) as zf:
        for name, data in members:
            # A ZipInfo keeps the name verbatim (zip-slip members included).
            info = zipfile.ZipInfo(name, date_time=(2017, 4, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_BZIP2
            zf.writestr(info, data)
    return buffer.getvalue()


def metadata_zip() -> bytes:
    return _bzip2_zip(
        [
            ("fma_metadata/README.txt", b"FMA metadata\n"),
            ("fma_metadata/tracks.csv", TRACKS_CSV),
            ("fma_metadata/genres.csv", GENRES_CSV),
            ("fma_metadata/raw_tracks.csv", b"track_id\n2\n"),
            ("fma_metadata/features.csv", b"feature\n"),
        ]
    )


def audio_zip(
    subset: str = "small",
    *,
    wrong_checksum_for: int | None = None,
    extra: list[tuple[str, bytes]] | None = None,
) -> bytes:
    lines = []
    for tid in CLIP_IDS:
        digest = sha1(fake_clip(tid)) if tid != wrong_checksum_for else "0" * 40
        lines.append(f"{digest}  {clip_rel(tid)}")
    members = [
        (f"fma_{subset}/README.txt", b"FMA clips\n"),
        (f"fma_{subset}/checksums", ("\n".join(lines) + "\n").encode()),
    ]
    members += [(f"fma_{subset}/{clip_rel(tid)}", fake_clip(tid)) for tid in CLIP_IDS]
    return _bzip2_zip(members + (extra or []))


@dataclass
class FakeFma:
    """State of the local FMA mirror: files served, requests seen, misbehaviour wanted."""

    files: dict[str, bytes]
    base_url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drop_after: dict[str, int] = field(default_factory=dict)  # name -> K, first request only
    ignore_range: bool = False

    def checksums(self) -> dict[str, str]:
        return {name: sha1(data) for name, data in self.files.items()}

    def ranges(self, name: str) -> list[str | None]:
        return [rng for seen, rng in self.requests if seen == name]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeFma  # set on a per-test subclass

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.state
        name = self.path.removeprefix("/fma/")
        range_header = self.headers.get("Range")
        state.requests.append((name, range_header))
        data = state.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/zip")
        self.end_headers()
        drop = state.drop_after.pop(name, None)
        if drop is not None:
            # Announce the whole body, send K bytes, hang up: a dropped connection.
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def fma_server() -> Iterator[FakeFma]:
    state = FakeFma(files={"fma_metadata.zip": metadata_zip(), "fma_small.zip": audio_zip()})
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/fma/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {
        "metadata_dir": tmp_path / "meta",
        "audio_dir": tmp_path / "audio",
        "download_dir": tmp_path / "downloads",
    }


def run_fetch(server: FakeFma, dirs: dict[str, Path], limit: int | None = None, **kwargs):
    messages: list[str] = []
    kwargs.setdefault("checksums", server.checksums())
    kwargs.setdefault("retry_wait", 0.0)
    kwargs.setdefault("progress_stream", io.StringIO())
    summary = fetch_fma(
        "small", limit, base_url=server.base_url, log=messages.append, **dirs, **kwargs
    )
    return summary, messages


def audio_files(audio_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(audio_dir).as_posix(): p.read_bytes()
        for p in sorted(audio_dir.rglob("*"))
        if p.is_file()
    }


def expected_clips(ids: tuple[int, ...] | list[int]) -> dict[str, bytes]:
    return {clip_rel(tid): fake_clip(tid) for tid in sorted(ids)}


def test_fetch_downloads_verifies_and_extracts_everything(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    progress = io.StringIO()
    summary, messages = run_fetch(fma_server, dirs, progress_stream=progress)

    # Only tracks.csv and genres.csv leave the metadata zip, byte for byte.
    assert sorted(p.name for p in dirs["metadata_dir"].iterdir()) == ["genres.csv", "tracks.csv"]
    assert (dirs["metadata_dir"] / "tracks.csv").read_bytes() == TRACKS_CSV
    assert (dirs["metadata_dir"] / "genres.csv").read_bytes() == GENRES_CSV
    # Clips land in FMA's NNN/NNNNNN.mp3 layout; README/checksums stay in the zip.
    assert audio_files(dirs["audio_dir"]) == expected_clips(CLIP_IDS)
    # Verified zips kept under their final names, no part files left.
    downloads = sorted(p.name for p in dirs["download_dir"].iterdir())
    assert downloads == ["fma_metadata.zip", "fma_small.zip"]
    for name in downloads:
        assert (dirs["download_dir"] / name).read_bytes() == fma_server.files[name]
    assert summary.clips.extracted == len(CLIP_IDS)
    assert summary.clips.verified == len(CLIP_IDS)  # each checked against the zip's checksums
    assert summary.clips.skipped == 0
    assert fma_server.requests == [("fma_metadata.zip", None), ("fma_small.zip", None)]
    assert any("SHA1 verified" in m for m in messages)
    # Progress on a non-TTY stream: whole lines (no carriage returns) with %, rate and size.
    text = progress.getvalue()
    assert "\r" not in text
    final_line = [line for line in text.splitlines() if line.startswith("fma_small.zip")][-1]
    assert "100.0%" in final_line and "MB/s" in final_line
    assert "FMA small" in str(summary) and "5 clips extracted" in str(summary)


def test_limit_takes_first_n_by_track_id_and_reuses_the_download(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    summary, _ = run_fetch(fma_server, dirs, limit=2)
    assert audio_files(dirs["audio_dir"]) == expected_clips([2, 5])
    assert (summary.clips.selected, summary.clips.available) == (2, len(CLIP_IDS))
    requests_after_first = len(fma_server.requests)

    # A damaged clip (wrong size) is re-extracted; present ones are skipped.
    damaged = dirs["audio_dir"] / clip_rel(5)
    damaged.write_bytes(b"truncated")
    summary, messages = run_fetch(fma_server, dirs, limit=None)
    assert len(fma_server.requests) == requests_after_first  # nothing downloaded again
    assert any("already downloaded and verified" in m for m in messages)
    assert audio_files(dirs["audio_dir"]) == expected_clips(CLIP_IDS)
    assert (summary.clips.skipped, summary.clips.extracted) == (1, len(CLIP_IDS) - 1)
    assert all(d.skipped and d.fetched_bytes == 0 for d in summary.downloads)


def test_checksum_mismatch_names_the_file_and_removes_it(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    checksums = fma_server.checksums()
    wrong = "1" * 40
    checksums["fma_small.zip"] = wrong
    with pytest.raises(ChecksumError) as err:
        run_fetch(fma_server, dirs, checksums=checksums)
    message = str(err.value)
    assert "fma_small.zip" in message
    assert wrong in message
    assert sha1(fma_server.files["fma_small.zip"]) in message  # the actual digest
    assert sorted(p.name for p in dirs["download_dir"].iterdir()) == ["fma_metadata.zip"]
    assert not dirs["audio_dir"].exists()


def test_corrupt_part_file_fails_the_checksum_then_downloads_cleanly(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    # A part file whose bytes are not the server's: resuming after it gives a bad zip.
    data = fma_server.files["fma_small.zip"]
    dirs["download_dir"].mkdir()
    part = dirs["download_dir"] / "fma_small.zip.part"
    part.write_bytes(bytes(b ^ 0xFF for b in data[:500]))
    with pytest.raises(ChecksumError, match=r"fma_small\.zip: SHA1 mismatch"):
        run_fetch(fma_server, dirs)
    assert fma_server.ranges("fma_small.zip") == ["bytes=500-"]
    assert not part.exists()
    run_fetch(fma_server, dirs)
    assert (dirs["download_dir"] / "fma_small.zip").read_bytes() == data
    assert audio_files(dirs["audio_dir"]) == expected_clips(CLIP_IDS)


def test_interrupted_download_resumes_on_the_next_call(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    data = fma_server.files["fma_small.zip"]
    k = len(data) // 3
    fma_server.drop_after["fma_small.zip"] = k
    with pytest.raises(FetchError) as err:
        run_fetch(fma_server, dirs, retries=0)
    assert f"{fma_server.base_url}fma_small.zip" in str(err.value)
    part = dirs["download_dir"] / "fma_small.zip.part"
    assert part.read_bytes() == data[:k]
    assert not (dirs["download_dir"] / "fma_small.zip").exists()

    summary, messages = run_fetch(fma_server, dirs, retries=0)
    assert fma_server.ranges("fma_small.zip") == [None, f"bytes={k}-"]
    assert fma_server.ranges("fma_metadata.zip") == [None]
    assert any("resuming" in m for m in messages)
    assert not part.exists()
    assert (dirs["download_dir"] / "fma_small.zip").read_bytes() == data
    small = summary.downloads[1]
    assert (small.resumed_from, small.fetched_bytes) == (k, len(data) - k)
    assert audio_files(dirs["audio_dir"]) == expected_clips(CLIP_IDS)


def test_dropped_connection_is_retried_with_a_range_request(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    k = 1000
    fma_server.drop_after["fma_metadata.zip"] = k
    run_fetch(fma_server, dirs, retries=1)
    assert fma_server.ranges("fma_metadata.zip") == [None, f"bytes={k}-"]
    assert (dirs["metadata_dir"] / "tracks.csv").read_bytes() == TRACKS_CSV


def test_server_ignoring_range_restarts_from_zero(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    data = fma_server.files["fma_small.zip"]
    dirs["download_dir"].mkdir()
    (dirs["download_dir"] / "fma_small.zip.part").write_bytes(b"x" * 700)  # not resumable
    fma_server.ignore_range = True
    summary, messages = run_fetch(fma_server, dirs)
    assert fma_server.ranges("fma_small.zip") == ["bytes=700-"]  # asked, got a 200
    assert any("ignored the Range request" in m for m in messages)
    assert (dirs["download_dir"] / "fma_small.zip").read_bytes() == data
    assert (summary.downloads[1].resumed_from, summary.downloads[1].fetched_bytes) == (
        700,
        len(data),
    )


def test_416_with_a_complete_part_file_verifies_it(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    data = fma_server.files["fma_small.zip"]
    dirs["download_dir"].mkdir()
    (dirs["download_dir"] / "fma_small.zip.part").write_bytes(data)  # killed before the rename
    summary, _ = run_fetch(fma_server, dirs)
    assert fma_server.ranges("fma_small.zip") == [f"bytes={len(data)}-"]
    assert summary.downloads[1].fetched_bytes == 0
    assert (dirs["download_dir"] / "fma_small.zip").read_bytes() == data


def test_416_with_an_oversized_part_file_restarts(
    fma_server: FakeFma, dirs: dict[str, Path]
) -> None:
    data = fma_server.files["fma_small.zip"]
    dirs["download_dir"].mkdir()
    (dirs["download_dir"] / "fma_small.zip.part").write_bytes(data + b"junk")
    _, messages = run_fetch(fma_server, dirs)
    assert fma_server.ranges("fma_small.zip") == [f"bytes={len(data) + 4}-", None]
    assert any("restarting" in m for m in messages)
    assert (dirs["download_dir"] / "fma_small.zip").read_bytes() == data


def test_network_errors_name_the_url(fma_server: FakeFma, dirs: dict[str, Path]) -> None:
    checksums = fma_server.checksums() | {"fma_medium.zip": "2" * 40}
    with pytest.raises(FetchError, match=r"fma_medium\.zip failed: HTTP 404") as err:
        fetch_fma(
            "medium", None, base_url=fma_server.base_url, checksums=checksums,
            log=lambda m: None, **dirs,
        )  # fmt: skip
    assert f"{fma_server.base_url}fma_medium.zip" in str(err.value)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/fma/"
    dirs = dirs | {"download_dir": dirs["download_dir"].parent / "other_downloads"}
    with pytest.raises(FetchError) as err:
        fetch_fma(
            "small", None, base_url=url, checksums=checksums, retries=1, retry_wait=0.0,
            log=lambda m: None, **dirs,
        )  # fmt: skip
    assert f"{url}fma_metadata.zip failed after 2 attempt(s)" in str(err.value)


def test_clip_checksums_and_zip_slip_members(tmp_path: Path) -> None:
    outside = tmp_path / "escape.mp3"
    evil = [
        ("fma_small/../../escape.mp3", b"evil"),
        ("../escape.mp3", b"evil"),
        ("fma_small/000/../../../escape.mp3", b"evil"),
        (f"{tmp_path}/abs.mp3", b"evil"),
        ("fma_small/001/000002.mp3", b"evil"),  # folder does not match the id
    ]
    zip_path = tmp_path / "fma_small.zip"
    zip_path.write_bytes(audio_zip(extra=evil))
    audio_dir = tmp_path / "deep" / "audio"
    summary = extract_clips(zip_path, audio_dir, "small", log=lambda m: None)
    assert audio_files(audio_dir) == expected_clips(CLIP_IDS)
    assert not outside.exists() and not (tmp_path / "abs.mp3").exists()
    assert {name for name, _ in evil} <= set(summary.ignored)
    with pytest.raises(FetchError, match="outside"):
        fetch._inside(audio_dir, "../escape.mp3")

    # A clip that does not match the zip's checksums file is never written.
    bad = tmp_path / "bad.zip"
    bad.write_bytes(audio_zip(wrong_checksum_for=10))
    bad_dir = tmp_path / "bad_audio"
    with pytest.raises(ChecksumError) as err:
        extract_clips(bad, bad_dir, "small", workers=1, log=lambda m: None)
    assert "fma_small/000/000010.mp3" in str(err.value)
    assert sha1(fake_clip(10)) in str(err.value) and "0" * 40 in str(err.value)
    assert not (bad_dir / clip_rel(10)).exists()
    assert not [p for p in bad_dir.rglob(".*") if p.is_file()]  # no temp files left
    # Verification off: the same zip extracts (CRC still checked by zipfile).
    summary = extract_clips(bad, bad_dir, "small", verify=False, log=lambda m: None)
    assert audio_files(bad_dir) == expected_clips(CLIP_IDS)
    assert summary.verified == 0


def test_wrong_zip_layout_is_a_clear_error(tmp_path: Path) -> None:
    zip_path = tmp_path / "fma_small.zip"
    zip_path.write_bytes(audio_zip(subset="medium"))
    with pytest.raises(FetchError, match=r"no clips named fma_small/NNN/NNNNNN\.mp3"):
        extract_clips(zip_path, tmp_path / "audio", "small", log=lambda m: None)
    not_zip = tmp_path / "fma_metadata.zip"
    not_zip.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(FetchError, match="not a readable zip"):
        fetch.extract_metadata(not_zip, tmp_path / "meta", log=lambda m: None)


def test_parse_checksums_reads_sha1sum_output() -> None:
    text = f"{'a' * 40}  002/002624.mp3\n{'B' * 40} *155/155320.mp3\n\nnot a line\n"
    assert parse_checksums(text) == {"002/002624.mp3": "a" * 40, "155/155320.mp3": "b" * 40}


def test_progress_bar_tty_redraws_in_place_and_logs_sparingly() -> None:
    now = [0.0]
    tty = io.StringIO()
    bar = DownloadProgress("x.zip", 10_000_000, 0, tty, is_tty=True, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = step * 0.5
        bar.update(step * 1_000_000)
    bar.finish()
    out = tty.getvalue()
    assert out.count("\r") == bar.lines == 11 and out.endswith("\n")
    assert "100.0%" in out and "2.00 MB/s" in out  # 1 MB per 0.5 s

    now[0] = 0.0
    log = io.StringIO()
    bar = DownloadProgress("x.zip", 10_000_000, 4_000_000, log, is_tty=False, clock=lambda: now[0])
    now[0] = 3.0
    bar.update(7_000_000)  # first draw: 3 MB in 3 s, 3 MB left
    for step in range(1, 100):  # 99 updates within 9.9 s: no new line
        now[0] = 3.0 + step * 0.1
        bar.update(7_000_000)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1
    assert "70.0%" in lines[0] and "1.00 MB/s" in lines[0] and "ETA 3s" in lines[0]


def test_cli_fetch_fma(
    fma_server: FakeFma, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CLAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FMA_METADATA_DIR", str(tmp_path / "meta"))
    monkeypatch.setenv("FMA_AUDIO_DIR", str(tmp_path / "audio"))
    argv = ["fetch-fma", "--subset", "small", "--limit", "3", "--base-url", fma_server.base_url]

    # The published SHA1 of the real release does not match the test zip: clear error.
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "fetch-fma: error: fma_metadata.zip: SHA1 mismatch" in err
    assert fetch.FMA_SHA1["fma_metadata.zip"] in err
    assert list((tmp_path / "data" / "downloads").iterdir()) == []

    monkeypatch.setattr(fetch, "FMA_SHA1", fma_server.checksums())
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "3 clips extracted" in out
    assert audio_files(tmp_path / "audio") == expected_clips([2, 5, 10])
    assert (tmp_path / "data" / "downloads" / "fma_small.zip").is_file()
