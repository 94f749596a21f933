"""Query by audio: `POST /api/search/audio` on the real server, hostile uploads included."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from clap_pipeline.audio.decode_av import decode_window_av
from clap_pipeline.model.clap import clip_embeddings, load_clap
from clap_pipeline.model.features import features_for_model
from clap_pipeline_tests.audio_fixtures import run_ffmpeg
from clap_pipeline_tests.serve_fixtures import (
    TRACK_IDS,
    Collection,
    make_collection,
    running_server,
    write_embeddings,
)

# A different sound per track, 12 s long (three windows): tones, chords, noises.
SOUNDS = [
    "sine=frequency=220:duration=12",
    "sine=frequency=880:duration=12",
    "anoisesrc=color=white:duration=12:amplitude=0.3",
    "anoisesrc=color=brown:duration=12:amplitude=0.5",
    "anoisesrc=color=pink:duration=12:amplitude=0.4",
    "aevalsrc=0.4*sin(2*PI*330*t)*sin(2*PI*2*t):d=12",
    "aevalsrc=0.3*sin(2*PI*440*t)+0.3*sin(2*PI*554*t):d=12",
    "aevalsrc=0.5*sin(2*PI*110*t)*lt(mod(t\\,0.5)\\,0.1):d=12",
    "sine=frequency=3000:duration=12",
    "aevalsrc=0.4*sin(2*PI*(200+100*t)*t):d=12",
    "anoisesrc=color=violet:duration=12:amplitude=0.2",
    "aevalsrc=0.5*sin(2*PI*60*t):d=12",
]


def audible_collection(data_dir: Path, ffmpeg: str, model_dir: Path) -> Collection:
    """Distinct MP3 clips, embedded as `track_embeddings` does: the first window decoded
    in-process and passed through the model's audio tower."""
    collection = make_collection(data_dir, ffmpeg)
    for tid, sound in zip(TRACK_IDS, SOUNDS, strict=True):
        clip = collection.clip(tid)
        run_ffmpeg(
            ffmpeg, "-f", "lavfi", "-i", sound, "-c:a", "libmp3lame", "-b:a", "128k", str(clip)
        )
    clap = load_clap(model_dir)
    windows = np.stack([decode_window_av(collection.clip(t)).samples for t in TRACK_IDS])
    with torch.inference_mode():
        matrix = clip_embeddings(clap.model.eval(), features_for_model(clap), windows, "cpu")
    write_embeddings(collection, TRACK_IDS, matrix, "1")
    collection.matrix = matrix
    return collection


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ffmpeg: str
) -> Iterator[tuple[Collection, httpx.Client]]:
    data = tmp_path_factory.mktemp("audio-query") / "data"
    collection = audible_collection(data, ffmpeg, tiny_model_dir)
    with (
        running_server(collection, tiny_model_dir) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        yield collection, http


def upload(http: httpx.Client, data: bytes, kind: str = "audio/mpeg", **params) -> httpx.Response:
    return http.post(
        "/api/search/audio", content=data, headers={"Content-Type": kind}, params=params
    )


def test_an_uploaded_clip_of_the_collection_finds_its_track_first(
    served: tuple[Collection, httpx.Client],
) -> None:
    collection, http = served
    for tid in (TRACK_IDS[2], TRACK_IDS[7]):
        response = upload(http, collection.clip(tid).read_bytes(), k=5)
        assert response.status_code == 200, response.text
        hits = response.json()
        assert hits[0]["track_id"] == tid and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len(hits) == 5 and response.headers["x-model-version"] == "1"
    # Filters hold: a track the filter leaves out is not returned.
    hits = upload(http, collection.clip(TRACK_IDS[2]).read_bytes(), k=100, genre="Jazz").json()
    assert hits and TRACK_IDS[2] not in {h["track_id"] for h in hits}
    assert all("Jazz" in h["genres"] for h in hits)


def test_every_accepted_format_is_decoded(
    served: tuple[Collection, httpx.Client], ffmpeg: str, tmp_path: Path
) -> None:
    collection, http = served
    source = collection.clip(TRACK_IDS[0])
    for suffix, kind in ((".wav", "audio/wav"), (".flac", "audio/flac"), (".ogg", "audio/ogg")):
        converted = tmp_path / f"query{suffix}"
        codec = ("-c:a", "libvorbis") if suffix == ".ogg" else ()
        run_ffmpeg(ffmpeg, "-i", str(source), *codec, str(converted))
        response = upload(http, converted.read_bytes(), kind, k=3)
        assert response.status_code == 200, (suffix, response.text)
        assert len(response.json()) == 3
    # The declared type is not trusted: an MP3 sent as octet-stream is decoded all the same.
    octet = upload(http, source.read_bytes(), "application/octet-stream", k=1)
    assert octet.json()[0]["track_id"] == TRACK_IDS[0]


def declaring_frames(mp3: bytes, frames: int) -> bytes:
    """The MP3 with its Xing/Info header's frame count (what its duration says) replaced."""
    data = bytearray(mp3)
    tag = max(data.find(b"Xing"), data.find(b"Info"))
    assert tag > 0 and struct.unpack(">I", data[tag + 4 : tag + 8])[0] & 1  # frames present
    data[tag + 8 : tag + 12] = struct.pack(">I", frames)
    return bytes(data)


def test_hostile_uploads_get_a_4xx_in_the_one_error_shape(
    served: tuple[Collection, httpx.Client],
) -> None:
    collection, http = served
    mp3 = collection.clip(TRACK_IDS[1]).read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    cases = {
        "empty": (b"", "audio/mpeg", 422, "audio_empty"),
        "truncated": (mp3[: len(mp3) // 3], "audio/mpeg", 422, "audio_truncated"),
        "random bytes": (np.random.default_rng(0).bytes(50_000), "audio/mpeg", 422, None),
        "a PNG named .mp3": (png, "audio/mpeg", 422, "audio_not_audio"),
        # 40 million MP3 frames: about 12 days declared by a 3-s file.
        "huge declared duration": (
            declaring_frames(mp3, 40_000_000),
            "audio/mpeg",
            422,
            "audio_too_long",
        ),
        "another type": (mp3, "text/plain", 415, None),
        "too large": (b"\0" * 20_000_001, "audio/mpeg", 413, None),
    }
    for name, (data, kind, status, error_type) in cases.items():
        response = upload(http, data, kind)
        assert response.status_code == status, (name, response.text)
        (error,) = response.json()["detail"]
        assert set(error) == {"loc", "msg", "type"} and error["msg"], (name, error)
        if error_type is not None:
            assert error["type"] == error_type, (name, error)
    assert http.get("/api/health").status_code == 200  # no worker stuck, still serving
    schema = http.get("/openapi.json").json()["paths"]["/api/search/audio"]["post"]
    assert set(schema["requestBody"]["content"]) >= {"audio/mpeg", "audio/wav", "audio/flac"}
    assert not any("path" in p["name"] or "url" in p["name"] for p in schema["parameters"])
