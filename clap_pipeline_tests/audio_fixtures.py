"""Audio files made with ffmpeg at test time, a tiny DuckDB `tracks` table, signal helpers.

``AudioFactory`` renders each kind of clip once per session and copies it where a
test wants it, so tests get fresh files (own mtimes) cheaply.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from clap_pipeline.dataset import audio_path, tracks_ddl

TONE_HZ = 1000.0
AMPLITUDE = 0.5


def run_ffmpeg(ffmpeg: str, *args: str) -> None:
    subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=120,
    )


def _tone(freq: float, seconds: float, rate: int, channels: int = 1) -> str:
    # aevalsrc gives an exact amplitude in every channel (ffmpeg's mono->stereo upmix
    # would lower it by 3 dB; lavfi's sine source is fixed at 1/8).
    expr = "|".join([f"{AMPLITUDE}*sin(2*PI*{freq}*t)"] * channels)
    return f"aevalsrc={expr}:s={rate}:d={seconds}"


# kind -> ffmpeg arguments after the (lavfi) input; every clip is a 1 kHz tone unless noted.
_ENCODED: dict[str, tuple[float, int, int, list[str]]] = {
    # kind: (seconds, sample rate, channels, codec args)
    "cbr128": (8.0, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "cbr256": (8.0, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "256k"]),
    "cbr320": (8.0, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "320k"]),
    "vbr": (8.0, 44100, 2, ["-c:a", "libmp3lame", "-q:a", "4"]),
    "mono": (8.0, 44100, 1, ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "22k": (8.0, 22050, 2, ["-c:a", "libmp3lame", "-b:a", "96k"]),
    "short2s": (2.0, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "192k"]),
    "tiny": (0.5, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "192k"]),
    "long30s": (30.0, 44100, 2, ["-c:a", "libmp3lame", "-b:a", "256k"]),
}
KINDS = (
    *_ENCODED,
    "wav",  # a WAV file named .mp3 (ffmpeg probes content, so it decodes)
    "left_only",  # stereo MP3 with the tone in the left channel only
    "two_tones",  # 1 kHz for 5 s then 2 kHz for 5 s (window offset tests)
    "silent",
    "empty",
    "random",
    "truncated",  # a 30-s MP3 cut to 40 % of its bytes
    "truncated_early",  # the same cut after 20 kB (audio stops at ~0.6 s)
    "truncated_tag",  # an ID3v2 tag that claims more bytes than the file has
)


_SHARED: dict[str, AudioFactory] = {}


class AudioFactory:
    """Renders each kind once into ``cache_dir``; ``make`` copies it to a destination."""

    @classmethod
    def shared(cls, ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
        """One cache per test session, shared by every test module."""
        if ffmpeg not in _SHARED:
            _SHARED[ffmpeg] = cls(ffmpeg, tmp_path_factory.mktemp("audio-cache"))
        return _SHARED[ffmpeg]

    def __init__(self, ffmpeg: str, cache_dir: Path) -> None:
        self.ffmpeg = ffmpeg
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)

    def source(self, kind: str) -> Path:
        path = self.cache_dir / f"{kind}.mp3"
        if not path.exists():
            self._render(kind, path)
        return path

    def make(self, kind: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source(kind), dest)
        return dest

    def make_library(self, audio_dir: Path, kinds_by_id: dict[int, str]) -> dict[int, Path]:
        """FMA layout: ``<audio_dir>/NNN/NNNNNN.mp3`` for each track id."""
        return {
            tid: self.make(kind, audio_path(audio_dir, tid)) for tid, kind in kinds_by_id.items()
        }

    def _render(self, kind: str, path: Path) -> None:
        ff = self.ffmpeg
        tmp = path.with_suffix(".tmp.mp3")
        if kind in _ENCODED:
            seconds, rate, channels, codec = _ENCODED[kind]
            run_ffmpeg(
                ff, "-f", "lavfi", "-i", _tone(TONE_HZ, seconds, rate, channels),
                *codec, str(tmp),
            )  # fmt: skip
        elif kind == "wav":
            # Left 1 kHz, right 3 kHz: the mono mix must hold each at half amplitude.
            run_ffmpeg(
                ff, "-f", "lavfi", "-i", _tone(1000, 6, 44100), "-f", "lavfi",
                "-i", _tone(3000, 6, 44100),
                "-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo",
                "-c:a", "pcm_s16le", "-f", "wav", str(tmp),
            )  # fmt: skip
        elif kind == "left_only":
            run_ffmpeg(
                ff, "-f", "lavfi", "-i", _tone(TONE_HZ, 8, 44100),
                "-af", "pan=stereo|c0=c0|c1=0*c0", "-c:a", "libmp3lame", "-b:a", "320k",
                str(tmp),
            )  # fmt: skip
        elif kind == "two_tones":
            run_ffmpeg(
                ff, "-f", "lavfi", "-i", _tone(1000, 5, 44100, 2), "-f", "lavfi",
                "-i", _tone(2000, 5, 44100, 2),
                "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1",
                "-c:a", "libmp3lame", "-b:a", "192k", str(tmp),
            )  # fmt: skip
        elif kind == "silent":
            run_ffmpeg(
                ff, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "8",
                "-c:a", "libmp3lame", "-b:a", "128k", str(tmp),
            )  # fmt: skip
        elif kind == "empty":
            tmp.write_bytes(b"")
        elif kind == "random":
            tmp.write_bytes(random.Random(7).randbytes(100_000))
        elif kind in ("truncated", "truncated_early"):
            data = self.source("long30s").read_bytes()
            tmp.write_bytes(data[: len(data) * 4 // 10] if kind == "truncated" else data[:20_000])
        elif kind == "truncated_tag":
            # ID3v2.4 header declaring a 1 MB tag (syncsafe 0x00 0x40 0x00 0x00), then 2 kB.
            tmp.write_bytes(b"ID3\x04\x00\x00\x00\x40\x00\x00" + b"\x00" * 2000)
        else:
            raise ValueError(f"unknown audio kind {kind!r}")
        tmp.replace(path)


def make_tracks_db(duckdb_path: Path, track_ids: Iterable[int]) -> None:
    """A tiny `tracks` table (track_id + a few FMA columns), replacing any previous one."""
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(duckdb_path))
    try:
        con.execute(tracks_ddl(["track_title", "artist_name", "track_genre_top"]))
        con.executemany(
            "INSERT INTO tracks VALUES (?, ?, ?, ?)",
            [[tid, f"title {tid}", f"artist {tid % 7}", "Rock"] for tid in sorted(track_ids)],
        )
    finally:
        con.close()


def dominant_frequency(samples: np.ndarray, rate: int = 48_000) -> float:
    """Frequency of the strongest FFT bin (0.2 Hz resolution on a 5-s window)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def tone_amplitude(samples: np.ndarray, freq: float, rate: int = 48_000) -> float:
    """Amplitude of the sinusoid at ``freq`` (projection onto sin/cos over whole periods)."""
    t = np.arange(samples.size) / rate
    x = samples.astype(np.float64)
    return float(2 * np.abs(np.mean(x * np.exp(-2j * np.pi * freq * t))))
