"""Helpers for the demo dataset tests: decoding with the ffmpeg binary, ID3 tags, audio features."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np

SR = 44_100

# FMA's 52 columns as fma-format.md lists them (group, then field), written out
# independently of the code under test.
FMA_FIELDS = {
    "album": "comments date_created date_released engineer favorites id information listens "
    "producer tags title tracks type",
    "artist": "active_year_begin active_year_end associated_labels bio comments date_created "
    "favorites id latitude location longitude members name related_projects tags website "
    "wikipedia_page",
    "set": "split subset",
    "track": "bit_rate comments composer date_created date_recorded duration favorites genre_top "
    "genres genres_all information interest language_code license listens lyricist number "
    "publisher tags title",
}
FMA_COLUMN_TUPLES = [(group, f) for group, fields in FMA_FIELDS.items() for f in fields.split()]

# FMA's 16 top-level genres and their ids (fma-format.md).
FMA_TOP_LEVEL = {
    38: "Experimental",
    15: "Electronic",
    12: "Rock",
    1235: "Instrumental",
    10: "Pop",
    17: "Folk",
    21: "Hip-Hop",
    2: "International",
    4: "Jazz",
    5: "Classical",
    9: "Country",
    20: "Spoken",
    3: "Blues",
    14: "Soul-RnB",
    8: "Old-Time / Historic",
    13: "Easy Listening",
}
LIST_COLUMNS = [
    ("track", "tags"),
    ("album", "tags"),
    ("artist", "tags"),
    ("track", "genres"),
    ("track", "genres_all"),
]


def decode(ffmpeg: str, path: Path, seconds: float | None = None) -> np.ndarray:
    """Decoded samples (n, 2) int16 at 44.1 kHz; an undecodable file gives 0 samples."""
    limit = ["-t", str(seconds)] if seconds else []
    proc = subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-i",
            str(path),
            *limit,
            "-f",
            "s16le",
            "-ac",
            "2",
            "-ar",
            str(SR),
            "-",
        ],
        capture_output=True,
        check=False,
    )
    return np.frombuffer(proc.stdout, "<i2").reshape(-1, 2)


def id3_tags(ffmpeg: str, path: Path) -> dict[str, str]:
    """The file's tags as ffmpeg's ffmetadata muxer lists them (lower-case keys)."""
    proc = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True,
        check=True,
    )
    tags = {}
    for line in proc.stdout.decode("utf-8").splitlines()[1:]:
        key, _, value = line.partition("=")
        tags[key.lower()] = value
    return tags


def frame_header(data: bytes) -> tuple[int, int, int]:
    """(MPEG version bits, layer bits, kb/s) of the first frame after the ID3v2 tag."""
    size = 0
    for byte in data[6:10]:
        size = (size << 7) | (byte & 0x7F)
    h = int.from_bytes(data[10 + size : 14 + size], "big")
    assert h >> 21 == 0x7FF, "no MPEG frame sync after the ID3 tag"
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[(h >> 12) & 0xF]
    return (h >> 19) & 3, (h >> 17) & 3, kbps


def _mono(pcm: np.ndarray, seconds: float = 5.0) -> np.ndarray:
    return pcm[: int(seconds * SR)].astype(np.float64).mean(axis=1) / 32768.0


def power_frames(pcm: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    x = _mono(pcm)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    return np.abs(np.fft.rfft(frames, axis=1)) ** 2


def spectral_centroid(pcm: np.ndarray, max_hz: float = SR / 2) -> float:
    power = power_frames(pcm).sum(axis=0)
    freqs = np.fft.rfftfreq(2048, 1.0 / SR)
    keep = freqs <= max_hz
    return float((freqs[keep] * power[keep]).sum() / power[keep].sum())


def band_fraction(pcm: np.ndarray, lo: float, hi: float) -> float:
    power = power_frames(pcm).sum(axis=0)
    freqs = np.fft.rfftfreq(2048, 1.0 / SR)
    return float(power[(freqs >= lo) & (freqs < hi)].sum() / power.sum())


def onset_strength(pcm: np.ndarray) -> float:
    """Mean positive change of the log band energies per second (more events -> larger)."""
    logb = _log_bands(pcm)
    return float(np.maximum(np.diff(logb, axis=0), 0).sum() / 5.0)


def _log_bands(pcm: np.ndarray) -> np.ndarray:
    power = power_frames(pcm)
    freqs = np.fft.rfftfreq(2048, 1.0 / SR)
    edges = np.geomspace(40, 16_000, 17)
    bands = np.stack(
        [
            power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1)
            for lo, hi in itertools.pairwise(edges)
        ],
        axis=1,
    )
    return np.log10(bands + 1e-10)


def genre_features(pcm: np.ndarray) -> np.ndarray:
    """Timbre and rhythm summary of the first 5 s: per-band level, variation and onsets."""
    logb = _log_bands(pcm)
    logb -= logb.mean()  # loudness-independent
    flux = np.maximum(np.diff(logb, axis=0), 0)
    return np.concatenate([logb.mean(axis=0), logb.std(axis=0), flux.mean(axis=0)])


def onset_rate(pcm: np.ndarray) -> float:
    """Onsets per second: peaks of the spectral flux above a quarter of its maximum."""
    magnitude = np.sqrt(power_frames(pcm, n_fft=1024, hop=256))
    flux = np.maximum(np.diff(magnitude, axis=0), 0).sum(axis=1)
    inner = flux[1:-1]
    peaks = (inner > 0.25 * flux.max()) & (inner >= flux[:-2]) & (inner > flux[2:])
    return float(peaks.sum() / 5.0)


def spectrogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the log band energies (16 bands x time) of two clips' first 5 s.

    Unlike a waveform correlation, it ignores MP3's phase and >16 kHz losses."""
    return float(np.corrcoef(_log_bands(a).ravel(), _log_bands(b).ravel())[0, 1])
