"""A served collection on disk and the real `clap-pipeline serve` process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clap_pipeline.config import Settings
from clap_pipeline.dataset import audio_path, folder_of
from clap_pipeline.model.choice import ModelChoice
from clap_pipeline.search.build import write_track_embeddings
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.window_embeddings import (
    l2_normalise,
    store_file,
    window_embeddings_schema,
    window_rows,
    write_search_rule,
    write_store_file,
)
from clap_pipeline.windows import WindowRule
from clap_pipeline_tests.audio_fixtures import run_ffmpeg
from clap_pipeline_tests.search_fixtures import unit_rows, write_tracks_table

TRACK_IDS = [2, 3, 5, 10, 20, 26, 30, 46, 48, 134, 1001, 1002]
TINY_DIM = 32  # projection_dim of the tiny CLAP
HOSTILE_ID = 26
HOSTILE_TITLE = '<b>Bold</b> <img src=x onerror="window.__xss=1">'
# FMA's licence titles, by track position; years by position (the last track has none).
LICENSES = [
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution 4.0 International",
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
    "CC0 1.0 Universal",
]
GENRE_TITLES = {12: "Rock", 17: "Folk", 15: "Electronic", 4: "Jazz", 21: "Hip-Hop"}
EXTRA_GENRES = {3: [17], 20: [12, 17]}  # tracks whose sub-genres include another root


def track_license(track_id: int) -> str:
    return LICENSES[TRACK_IDS.index(track_id) % len(LICENSES)]


def track_year(track_id: int) -> int | None:
    i = TRACK_IDS.index(track_id)
    return None if i == len(TRACK_IDS) - 1 else 2008 + i


@dataclass
class Collection:
    data_dir: Path
    track_ids: list[int]
    matrix: np.ndarray  # rows in TRACK_IDS order

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "clap.duckdb"

    def clip(self, track_id: int) -> Path:
        return audio_path(self.data_dir / "fma_audio", track_id)


def write_clips(ffmpeg: str, collection: Collection, seconds: float = 3.0) -> None:
    """A real MP3 (a tone) per track, so a browser can load and seek it."""
    source = collection.data_dir / "tone.mp3"
    run_ffmpeg(
        ffmpeg,
        *("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate=44100"),
        *("-c:a", "libmp3lame", "-b:a", "128k", str(source)),
    )
    for tid in collection.track_ids:
        target = collection.clip(tid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def write_embeddings(
    collection: Collection, track_ids: list[int], matrix: np.ndarray, version: str
) -> None:
    write_track_embeddings(
        collection.duckdb_path,
        np.array(track_ids, np.int64),
        matrix,
        [str(collection.clip(t)) for t in track_ids],
        np.full(len(track_ids), 48_000),
        ModelChoice("tiny", version, f"run-{version}"),
    )


def make_collection(data_dir: Path, ffmpeg: str, seed: int = 4, clip_s: float = 3.0) -> Collection:
    """`tracks` (one hostile title), MP3 clips of ``clip_s`` and `track_embeddings` (version 1)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    collection = Collection(data_dir, list(TRACK_IDS), unit_rows(len(TRACK_IDS), TINY_DIM, seed))
    write_tracks_table(collection.duckdb_path, TRACK_IDS)
    with duckdb_connection(collection.duckdb_path) as con:
        con.execute(
            "UPDATE tracks SET track_title = ? WHERE track_id = ?", [HOSTILE_TITLE, HOSTILE_ID]
        )
        # The filter columns: licences, release dates, every genre (ids into `genres`).
        con.execute("ALTER TABLE tracks ADD COLUMN album_date_released TIMESTAMP")
        con.execute("ALTER TABLE tracks ADD COLUMN track_genres_all INTEGER[]")
        con.execute("CREATE TABLE genres (genre_id BIGINT, title VARCHAR)")
        con.executemany("INSERT INTO genres VALUES (?, ?)", list(GENRE_TITLES.items()))
        id_of = {title: gid for gid, title in GENRE_TITLES.items()}
        for tid in TRACK_IDS:
            (top,) = con.execute(
                "SELECT track_genre_top FROM tracks WHERE track_id = ?", [tid]
            ).fetchone()
            year = track_year(tid)
            con.execute(
                "UPDATE tracks SET track_license = ?, album_date_released = ?, "
                "track_genres_all = ? WHERE track_id = ?",
                [
                    track_license(tid),
                    None if year is None else f"{year}-06-01",
                    [id_of[top], *EXTRA_GENRES.get(tid, [])],
                    tid,
                ],
            )
    write_clips(ffmpeg, collection, clip_s)
    write_embeddings(collection, TRACK_IDS, collection.matrix, "1")
    return collection


WINDOW_STARTS = (0.0, 5.0, 10.0)  # three 5-s windows per track (clips of >= 15 s)
MOMENT_QUERY = "warm lo-fi guitar loop"


def write_window_store(
    collection: Collection, model_dir: Path, moment_at_s: float = 10.0, rule: str = "max"
) -> None:
    """Window embeddings of every track for the model at ``model_dir`` (the served one), and
    the evaluation's choice of ``rule``: the first window is the track's row of the matrix,
    the others near it, except the one at ``moment_at_s``, which sounds like
    ``MOMENT_QUERY`` (that query's moment in every track)."""
    from clap_pipeline.model.clap import load_clap, model_fingerprint
    from clap_pipeline.search.text_encoder import encode_query

    clap = load_clap(str(model_dir))
    fingerprint, query = model_fingerprint(clap.model), encode_query(clap, MOMENT_QUERY)
    rng = np.random.default_rng(7)
    ids, starts, vectors = [], [], []
    for tid, row in zip(collection.track_ids, collection.matrix, strict=True):
        for start in WINDOW_STARTS:
            near = row + 0.2 * rng.standard_normal(row.shape) if start else row
            vectors.append(0.9 * query + 0.1 * row if start == moment_at_s else near)
            ids.append(tid)
            starts.append(start)
    schema = window_embeddings_schema(
        len(query), model_version="", model_fingerprint=fingerprint, model_source=str(model_dir),
        rule=WindowRule(),
    )  # fmt: skip
    settings = Settings(data_dir=collection.data_dir)
    ids_a, starts_a = np.array(ids), np.array(starts)
    emb = l2_normalise(np.array(vectors, dtype=np.float32))
    for folder in sorted({folder_of(t) for t in ids}):
        rows = np.flatnonzero([folder_of(t) == folder for t in ids])
        table = window_rows(
            schema, ids_a[rows], starts_a[rows], starts_a[rows] + 5.0, emb[rows],
            np.full(len(rows), 48_000), np.zeros(len(rows)),
        )  # fmt: skip
        write_store_file(store_file(settings.window_embeddings_dir, fingerprint, folder), table)
    write_search_rule(settings.reports_dir, rule, "the test's choice")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server process, killing it if it does not exit within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 30) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@contextlib.contextmanager
def running_server(
    collection: Collection,
    model_dir: Path | None,
    *,
    poll_s: float = 0.5,
    startup_s: float = 120,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """`clap-pipeline serve` on ``host``:<free port>; yields its loopback base URL, stops it
    after. ``env``: more variables (e.g. ``CLAP_SERVE_TOKEN``).

    ``model_dir`` None: the server takes the model from the registry (the version that
    built `track_embeddings`).
    """
    port = free_port()
    env = {
        **os.environ,
        "CLAP_DATA_DIR": str(collection.data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{collection.data_dir / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env or {}),
    }
    for var in ("FMA_AUDIO_DIR", "FMA_METADATA_DIR"):
        env.pop(var, None)
    cli = Path(sys.executable).with_name("clap-pipeline")
    command = [str(cli), "serve", "--host", host, "--port", str(port), "--poll-s", str(poll_s)]
    if model_dir is not None:
        command += ["--model", str(model_dir)]
    log_path = collection.data_dir / f"serve-{port}.log"
    with open(log_path, "w+", encoding="utf-8") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited early:\n{log_path.read_text()}")
                try:
                    if get_json(f"{base}/api/health", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"not healthy in {startup_s} s:\n{log_path.read_text()}")
                time.sleep(0.3)
            yield base
        finally:
            stop_process(proc)
