"""`clap-pipeline demo-data`: an offline FMA-format dataset whose audio follows its metadata.

Writes ``<out>/fma_metadata/{tracks.csv,genres.csv}`` and ``<out>/fma_audio/NNN/NNNNNN.mp3``
in the shape of the real release (three-line pandas header, 52 columns, Python-repr
lists, ``-1`` gaps, HTML/newlines in free text, sparse ids, mixed MP3 encodings,
ID3v2 tags) so the whole pipeline runs without a download.

The audio is synthesised from each track's metadata, so a model can learn a
text <-> audio mapping from the first seconds of a clip:

* genre (the top-level genre of the track's first genre) -> instruments and rhythm
  (Rock: distorted saw power chords and a backbeat; Electronic: square/saw arpeggio
  over four-on-the-floor; Hip-Hop: boom-bap and sub bass; Folk: Karplus-Strong
  fingerpicking; Classical: soft strings; Jazz: swing ride and walking bass; Pop:
  bright chords, lead and drums; Experimental: noise bursts and glitches off-grid);
* tags: ``slow``/``upbeat``/``fast`` -> tempo, ``low``/``high`` -> register,
  ``bright``/``dark``/``warm``/``lo-fi`` -> tone (filter, saturation, hiss).

Each clip is a seamless loop of four bars (rendered circularly, so the FFT
filters are exact) tiled to 30 s and piped as PCM into ffmpeg/libmp3lame; clips
are encoded in parallel. A few tracks are FMA-style defects: an empty clip, a
0.5-s clip, a file cut mid-frame and a listed track without a file.

Everything is a function of the seed: the same seed gives the same tracks.csv
bytes and the same MP3 bytes (with the same ffmpeg build).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clap_pipeline.ffmpeg_bin import ffmpeg_exe
from clap_pipeline.fma import FMA_COLUMNS
from clap_pipeline.selection import audio_path, folder_of
from clap_pipeline.storage import atomic_path

Log = Callable[[str], None]

SR = 44_100
CLIP_SECONDS = 30.0
SHORT_CLIP_SECONDS = 0.5
MIN_TRACKS = 8  # 4 defects + at least one playable track per split
MAX_TRACKS = 200_000  # keeps ids below 1,000,000 (six digits, FMA's path format)
MARKER_NAME = ".clap-demo-dataset.json"
GENERATOR = "clap-pipeline demo-data"
FORMAT_VERSION = 1

DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING = (
    "empty_clip",
    "short_clip",
    "truncated_file",
    "missing_file",
)
DEFECT_KINDS = (DEFECT_EMPTY, DEFECT_SHORT, DEFECT_TRUNCATED, DEFECT_MISSING)


class DemoDataError(RuntimeError):
    """The demo dataset cannot be written; the message names the path or setting."""


# --------------------------------------------------------------------------- genres

# (genre_id, parent, title, top_level) as in FMA's genres.csv: the 16 top-level
# genres and some of their sub-genres, with the real ids.
GENRES: tuple[tuple[int, int, str, int], ...] = (
    (1, 38, "Avant-Garde", 38),
    (2, 0, "International", 2),
    (3, 0, "Blues", 3),
    (4, 0, "Jazz", 4),
    (5, 0, "Classical", 5),
    (8, 0, "Old-Time / Historic", 8),
    (9, 0, "Country", 9),
    (10, 0, "Pop", 10),
    (12, 0, "Rock", 12),
    (13, 0, "Easy Listening", 13),
    (14, 0, "Soul-RnB", 14),
    (15, 0, "Electronic", 15),
    (17, 0, "Folk", 17),
    (18, 1235, "Soundtrack", 1235),
    (20, 0, "Spoken", 20),
    (21, 0, "Hip-Hop", 21),
    (25, 12, "Punk", 12),
    (27, 12, "Lo-Fi", 12),
    (31, 12, "Metal", 12),
    (32, 38, "Noise", 38),
    (33, 17, "Psych-Folk", 17),
    (37, 4, "Jazz: Vocal", 4),
    (38, 0, "Experimental", 38),
    (46, 2, "Latin America", 2),
    (47, 38, "Drone", 38),
    (49, 17, "Free-Folk", 17),
    (58, 12, "Psych-Rock", 12),
    (66, 12, "Indie-Rock", 12),
    (74, 4, "Free-Jazz", 4),
    (76, 10, "Experimental Pop", 10),
    (77, 2, "French", 2),
    (85, 12, "Garage", 12),
    (100, 21, "Alternative Hip-Hop", 21),
    (103, 17, "Singer-Songwriter", 17),
    (107, 1235, "Ambient", 1235),
    (179, 4, "Big Band/Swing", 4),
    (180, 17, "British Folk", 17),
    (181, 15, "Techno", 15),
    (182, 15, "House", 15),
    (187, 5, "20th Century Classical", 5),
    (224, 38, "Sound Collage", 38),
    (236, 15, "IDM", 15),
    (240, 297, "Chiptune", 15),
    (250, 38, "Improv", 38),
    (297, 15, "Chip Music", 15),
    (322, 5, "Composed Music", 5),
    (362, 10, "Synth Pop", 10),
    (442, 5, "Chamber Music", 5),
    (539, 21, "Rap", 21),
    (659, 5, "Contemporary Classical", 5),
    (811, 21, "Hip-Hop Beats", 21),
    (906, 4, "Modern Jazz", 4),
    (1235, 0, "Instrumental", 1235),
)
GENRE_BY_ID: dict[int, tuple[int, int, str, int]] = {g[0]: g for g in GENRES}

# Top-level genre id -> synthesis style. These eight get tracks; the others only
# appear as a second genre of multi-genre tracks (whose genre_top is then empty).
STYLE_OF_TOP: dict[int, str] = {
    12: "rock",
    15: "electronic",
    21: "hiphop",
    17: "folk",
    5: "classical",
    4: "jazz",
    10: "pop",
    38: "experimental",
}
STYLES: tuple[str, ...] = tuple(STYLE_OF_TOP.values())
TOP_OF_STYLE: dict[str, int] = {s: g for g, s in STYLE_OF_TOP.items()}
# Sub-genres a track of each style may be filed under (Lo-Fi stays unused: its
# name would collide with the "lo-fi" tone tag).
SUBGENRES: dict[int, tuple[int, ...]] = {
    top: tuple(g[0] for g in GENRES if g[3] == top and g[0] != top and g[0] != 27)
    for top in STYLE_OF_TOP
}

TEMPO_TAGS = ("slow", "upbeat", "fast")
REGISTER_TAGS = ("low", "high")
TONE_TAGS = ("bright", "dark", "warm", "lo-fi")
DESCRIPTIVE_TAGS = frozenset(TEMPO_TAGS + REGISTER_TAGS + TONE_TAGS)


def genre_ancestors(genre_id: int) -> list[int]:
    """The genre and its parents up to the root (FMA's ``genres_all`` is their union)."""
    chain = []
    current = genre_id
    while current and current in GENRE_BY_ID and current not in chain:
        chain.append(current)
        current = GENRE_BY_ID[current][1]
    return chain


def style_for_genres(genre_ids: Sequence[int]) -> str:
    """Synthesis style of a track: the top-level genre of its first listed genre."""
    for gid in genre_ids:
        top = GENRE_BY_ID.get(int(gid), (0, 0, "", 0))[3]
        if top in STYLE_OF_TOP:
            return STYLE_OF_TOP[top]
    raise ValueError(f"no synthesised genre among {list(genre_ids)}")


# --------------------------------------------------------------------------- audio params


@dataclass(frozen=True)
class AudioParams:
    """What the synthesiser needs; a pure function of (seed, track_id, genres, tags)."""

    style: str
    tempo: str | None = None  # slow / upbeat / fast / None (the genre's own tempo)
    register: str | None = None  # low / high / None
    tone: str | None = None  # bright / dark / warm / lo-fi / None
    seed: int = 0
    track_id: int = 0

    @classmethod
    def from_metadata(
        cls, track_id: int, genre_ids: Sequence[int], tags: Iterable[str], seed: int
    ) -> AudioParams:
        tags = [str(t).strip().lower() for t in tags]

        def first(choices: tuple[str, ...]) -> str | None:
            return next((t for t in tags if t in choices), None)

        return cls(
            style=style_for_genres(genre_ids),
            tempo=first(TEMPO_TAGS),
            register=first(REGISTER_TAGS),
            tone=first(TONE_TAGS),
            seed=seed,
            track_id=int(track_id),
        )


# Default tempo (bpm) of each style when no tempo tag says otherwise.
STYLE_BPM = {
    "rock": 124,
    "electronic": 126,
    "hiphop": 90,
    "folk": 102,
    "classical": 84,
    "jazz": 138,
    "pop": 112,
    "experimental": 100,
}
TAG_BPM = {"slow": 72, "upbeat": 122, "fast": 172}


# --------------------------------------------------------------------------- synthesis


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


@functools.lru_cache(maxsize=256)
def _time(n: int) -> np.ndarray:
    return _readonly(np.arange(n) / SR)


def _env(n: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = _time(n)
    return np.minimum(1.0, t / max(attack_s, 1e-4)) * np.exp(-t / decay_s)


def _sustain(n: int, attack_s: float, release_s: float) -> np.ndarray:
    t = _time(n)
    rise = np.minimum(1.0, t / attack_s)
    fall = np.minimum(1.0, (n / SR - t) / release_s)
    return np.clip(np.minimum(rise, fall), 0.0, 1.0)


def _osc(kind: str, freq: float, n: int) -> np.ndarray:
    phase = (freq * np.arange(n) / SR) % 1.0
    if kind == "saw":
        return 2.0 * phase - 1.0
    if kind == "square":
        return np.where(phase < 0.5, 1.0, -1.0)
    if kind == "tri":
        return 4.0 * np.abs(phase - 0.5) - 1.0
    return np.sin(2.0 * np.pi * phase)


_TABLE_SIZE = 4096


@functools.lru_cache(maxsize=64)
def _wavetable(amps: tuple[float, ...]) -> np.ndarray:
    phase = 2 * np.pi * np.arange(_TABLE_SIZE) / _TABLE_SIZE
    return _readonly(sum(a * np.sin(k * phase) for k, a in enumerate(amps, start=1)))


def _harmonics(freq: float, n: int, amps: Sequence[float], vibrato: float = 0.0) -> np.ndarray:
    """Additive tone read from a wavetable; ``vibrato``: relative depth of a 5.5 Hz wobble."""
    if vibrato:
        cycles = freq * np.cumsum(1.0 + vibrato * np.sin(2 * np.pi * 5.5 * _time(n))) / SR
    else:
        cycles = freq * _time(n)
    index = (cycles * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)
    return _wavetable(tuple(amps))[index]


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float64)
    x.setflags(write=False)
    return x


@functools.cache
def _noise(n: int, variant: int = 0) -> np.ndarray:
    return _readonly(np.random.default_rng([7919, n, variant]).standard_normal(n))


@functools.cache
def _kick() -> np.ndarray:
    n = int(0.45 * SR)
    t = _time(n)
    freq = 45.0 + 115.0 * np.exp(-t / 0.035)
    x = np.sin(2 * np.pi * np.cumsum(freq) / SR) * np.exp(-t / 0.22)
    x[:80] += np.linspace(0.5, 0.0, 80)  # beater click
    return _readonly(x)


@functools.cache
def _snare(decay_s: float = 0.12) -> np.ndarray:
    n = int(0.35 * SR)
    t = _time(n)
    noise = np.diff(_noise(n + 1, 1))  # differentiated noise: brighter than white
    body = np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.06)
    return _readonly(0.55 * noise * np.exp(-t / decay_s) + 0.6 * body)


@functools.cache
def _clap() -> np.ndarray:
    n = int(0.25 * SR)
    t = _time(n)
    noise = np.diff(_noise(n + 1, 2))
    env = np.exp(-t / 0.09)
    for offset in (0.0, 0.011, 0.022):  # three hands slightly apart
        k = int(offset * SR)
        env[k : k + 200] += np.exp(-np.arange(min(200, n - k)) / 60.0)
    return _readonly(0.45 * noise * env)


@functools.cache
def _hat(open_hat: bool = False) -> np.ndarray:
    n = int((0.3 if open_hat else 0.06) * SR)
    t = _time(n)
    noise = np.diff(np.diff(_noise(n + 2, 3)))  # second difference: mostly > 5 kHz
    return _readonly(0.35 * noise * np.exp(-t / (0.12 if open_hat else 0.018)))


@functools.cache
def _ride() -> np.ndarray:
    n = int(1.0 * SR)
    t = _time(n)
    partials = (3120.0, 4230.0, 5370.0, 6610.0, 8130.0, 9420.0)
    metal = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(partials)) / len(partials)
    noise = np.diff(_noise(n + 1, 4)) * 0.25
    return _readonly((metal + noise) * np.exp(-t / 0.45) * 0.6)


@functools.lru_cache(maxsize=1024)
def _pluck(period: int, n: int, variant: int) -> np.ndarray:
    """Karplus-Strong string: one period of excitation circulating in a damped delay line.

    y[i] = d * (y[i-p] + y[i-p-1]) / 2, computed one period (p samples) at a time.
    """
    rng = np.random.default_rng([104729, period, variant])
    blocks = -(-n // period) + 1
    out = np.empty(blocks * period)
    # One period of excitation, built from its harmonics: random phases, amplitudes
    # falling as 1/k (a finger pluck, not a pick's click) and no DC.
    harmonics = np.arange(period // 2 + 1)
    amplitude = np.where(harmonics > 0, 1.0 / np.maximum(harmonics, 1), 0.0)
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    burst = np.fft.irfft(amplitude * np.exp(1j * phases), period)
    out[:period] = burst / (np.abs(burst).max() + 1e-9)
    damping = 0.9965
    for k in range(1, blocks):
        prev = out[(k - 1) * period : k * period]
        before = out[(k - 1) * period - 1] if k > 1 else 0.0
        shifted = np.concatenate(([before], prev[:-1]))
        out[k * period : (k + 1) * period] = 0.5 * damping * (prev + shifted)
    return _readonly(out[:n] * _sustain(n, 0.001, 0.05))


def _tone_response(freqs: np.ndarray, style: str, tone: str | None) -> np.ndarray:
    """Magnitude response of the style's own colour times the tone tag's filter."""
    gain = np.ones_like(freqs)
    if style == "classical":
        gain /= np.sqrt(1 + (freqs / 4500.0) ** 4)
    elif style == "hiphop":
        gain /= np.sqrt(1 + (freqs / 7000.0) ** 4)
    # Clearly audible but moderate, so the genre still shows through every tone.
    if tone == "bright":
        gain *= 1.0 + 1.0 / (1.0 + np.exp(-(freqs - 3000.0) / 500.0))  # +6 dB shelf
        gain /= np.sqrt(1 + (120.0 / np.maximum(freqs, 1.0)) ** 2)
    elif tone == "dark":
        gain /= np.sqrt(1 + (freqs / 1800.0) ** 4)  # -12 dB/octave above 1.8 kHz
    elif tone == "warm":
        gain /= np.sqrt(1 + (freqs / 3500.0) ** 2)
        gain *= 1.0 + 0.6 / (1.0 + np.exp((freqs - 250.0) / 60.0))
    elif tone == "lo-fi":  # telephone band
        gain /= np.sqrt(1 + (freqs / 4000.0) ** 4)
        gain /= np.sqrt(1 + (300.0 / np.maximum(freqs, 1.0)) ** 8)
    return gain


# 7-smooth numbers: loop lengths that FFT quickly.
_SMOOTH = np.array(
    sorted(
        2**a * 3**b * 5**c * 7**d
        for a in range(15)
        for b in range(10)
        for c in range(7)
        for d in range(6)
        if 2**a * 3**b * 5**c * 7**d < 40_000
    )
)


def _step_samples(bpm: float) -> int:
    """Samples per 16th note, rounded to a 7-smooth number (tempo error < 1 %)."""
    target = SR * 60.0 / bpm / 4.0
    return int(_SMOOTH[np.argmin(np.abs(_SMOOTH - target))])


def _bpm(params: AudioParams, rng: np.random.Generator) -> float:
    base = TAG_BPM[params.tempo] if params.tempo else STYLE_BPM[params.style]
    return float(base * rng.choice((0.97, 0.985, 1.0, 1.015, 1.03)))


class _Loop:
    """Four bars of 16th steps, rendered circularly on a centre and a wide bus."""

    def __init__(self, step: int, rng: np.random.Generator, bars: int = 4) -> None:
        self.step = step
        self.rng = rng
        self.bars = bars
        self.n = step * 16 * self.bars
        self.center = np.zeros(self.n)
        self.wide = np.zeros(self.n)

    def at(self, bar: int, step16: float, swing: float = 0.0) -> int:
        pos = bar * 16 + step16
        if swing and int(step16) % 4 == 2:  # delay the off-beat 8th
            pos += swing
        return round(pos * self.step)

    def add(self, sig: np.ndarray, start: int, gain: float = 1.0, wide: bool = False) -> None:
        buf = self.wide if wide else self.center
        sig = sig[: self.n]
        start %= self.n
        end = start + len(sig)
        if end <= self.n:
            buf[start:end] += gain * sig
        else:
            split = self.n - start
            buf[start:] += gain * sig[:split]
            buf[: end - self.n] += gain * sig[split:]

    def steps(self, count: float) -> int:
        return int(count * self.step)


MAJOR, MINOR = (0, 4, 7), (0, 3, 7)
PROGRESSIONS = (
    ((0, MAJOR), (7, MAJOR), (9, MINOR), (5, MAJOR)),
    ((0, MAJOR), (5, MAJOR), (7, MAJOR), (5, MAJOR)),
    ((0, MINOR), (8, MAJOR), (3, MAJOR), (10, MAJOR)),
    ((0, MINOR), (5, MINOR), (7, MINOR), (0, MINOR)),
)
JAZZ_PROGRESSIONS = (
    ((2, (0, 3, 7, 10)), (7, (0, 4, 7, 10)), (0, (0, 4, 7, 11)), (9, (0, 4, 7, 10))),
    ((0, (0, 4, 7, 11)), (9, (0, 3, 7, 10)), (2, (0, 3, 7, 10)), (7, (0, 4, 7, 10))),
)
PENTATONIC = (0, 2, 4, 7, 9, 12, 14)


def _drums(
    loop: _Loop,
    kicks: Iterable[float],
    snares: Iterable[float],
    swing: float = 0.0,
    hats: Iterable[float] = (),
    open_hats: Iterable[float] = (),
    claps: Iterable[float] = (),
    level: float = 1.0,
) -> None:
    for bar in range(loop.bars):
        for s in kicks:
            loop.add(_kick(), loop.at(bar, s, swing), 0.9 * level)
        for s in snares:
            loop.add(_snare(), loop.at(bar, s, swing), 0.7 * level)
        for s in claps:
            loop.add(_clap(), loop.at(bar, s, swing), 0.6 * level)
        for s in hats:
            loop.add(_hat(), loop.at(bar, s, swing), 0.35 * level, wide=True)
        for s in open_hats:
            loop.add(_hat(True), loop.at(bar, s, swing), 0.3 * level, wide=True)


def _rock(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    chug = loop.steps(2)
    for bar, (root, _quality) in enumerate(prog[: loop.bars]):
        chord = sum(
            _osc("saw", _hz(tonic + root + iv) * detune, chug)
            for iv, detune in ((0, 1.0), (7, 1.002), (12, 0.998), (0, 1.004))
        )
        guitar = np.tanh(3.0 * chord) * _env(chug, 0.003, 0.35)
        bass = _osc("tri", _hz(tonic + root - 12), chug) * _env(chug, 0.003, 0.25)
        for e in range(8):
            loop.add(guitar, loop.at(bar, 2 * e), 0.32, wide=True)
            loop.add(bass, loop.at(bar, 2 * e), 0.35)
    kicks = (0, 8, 10) if rng.random() < 0.5 else (0, 6, 8)
    _drums(loop, kicks=kicks, snares=(4, 12), hats=range(0, 16, 2))


def _electronic(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    note = loop.step
    shape = ("square", "saw")[rng.integers(2)]
    pattern = (0, 1, 2, 3, 2, 1, 3, 2)
    for bar, (root, quality) in enumerate(prog[: loop.bars]):
        tones = (*quality, 12)
        for s in range(16):
            midi = tonic + 12 + root + tones[pattern[s % 8] % len(tones)]
            synth = (
                0.6 * _osc(shape, _hz(midi), note) + 0.4 * _osc("square", _hz(midi) * 1.005, note)
            ) * _env(note, 0.002, 0.07)
            loop.add(synth, loop.at(bar, s), 0.22, wide=True)
        bass_len = loop.steps(2)
        bass = _osc("saw", _hz(tonic + root - 12), bass_len) * _env(bass_len, 0.003, 0.12)
        for s in (2, 6, 10, 14):
            loop.add(bass, loop.at(bar, s), 0.3)
    _drums(loop, kicks=(0, 4, 8, 12), snares=(), claps=(4, 12), open_hats=(2, 6, 10, 14))


def _hiphop(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[2 + rng.integers(2)]  # minor
    swing = 0.35
    sub_len = loop.steps(6)
    keys_len = loop.steps(14)
    for bar, (root, quality) in enumerate(prog[: loop.bars]):
        sub = _harmonics(_hz(tonic + root - 24), sub_len, (1.0, 0.15)) * _sustain(
            sub_len, 0.01, 0.15
        )
        for s in (0, 10):
            loop.add(sub, loop.at(bar, s), 0.75)
        keys = sum(_harmonics(_hz(tonic + root + iv), keys_len, (1.0, 0.25)) for iv in quality)
        keys *= _env(keys_len, 0.01, 0.9) * (1 + 0.2 * np.sin(2 * np.pi * 4.0 * _time(keys_len)))
        loop.add(keys, loop.at(bar, 0), 0.07, wide=True)
    _drums(loop, kicks=(0, 7, 10), snares=(4, 12), hats=range(0, 16, 2), swing=swing)


def _folk(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[rng.integers(2)]  # major
    ring = loop.steps(6)
    picking = (0, 2, 3, 1, 2, 3, 1, 2)  # thumb on the root, fingers on the chord
    for bar, (root, quality) in enumerate(prog[: loop.bars]):
        voicing = (root - 12, root + quality[1], root + quality[2], root + 12)
        for e in range(8):
            midi = tonic + voicing[picking[e]]
            period = max(2, round(SR / _hz(midi)))
            string = _pluck(period, ring, (bar + e) % 3)
            loop.add(string, loop.at(bar, 2 * e), 0.5 if e else 0.6, wide=e % 2 == 1)


def _classical(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    bar_len = loop.steps(16)
    pad_len = bar_len + loop.steps(3)
    pad_env = _sustain(pad_len, 0.45, 0.5)
    for bar, (root, quality) in enumerate(prog[: loop.bars]):
        for iv in (root - 12, root + quality[1], root + quality[2], root + 12):
            voice = _harmonics(_hz(tonic + iv), pad_len, (1.0, 0.3, 0.12, 0.05), vibrato=0.004)
            loop.add(voice * pad_env, loop.at(bar, 0), 0.13, wide=True)
        for half in (0, 8):
            midi = tonic + 12 + root + quality[rng.integers(3)]
            note_len = loop.steps(8)
            melody = _harmonics(_hz(midi), note_len, (1.0, 0.08), vibrato=0.006)
            loop.add(melody * _sustain(note_len, 0.12, 0.2), loop.at(bar, half), 0.2)


def _jazz(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = JAZZ_PROGRESSIONS[rng.integers(len(JAZZ_PROGRESSIONS))]
    swing = 0.67  # triplet feel: the off-beat 8th lands on the third triplet
    bass_len = loop.steps(4)
    comp_len = loop.steps(5)
    for bar, (root, chord) in enumerate(prog[: loop.bars]):
        next_root = prog[(bar + 1) % loop.bars][0]
        walk = (
            root,
            root + chord[1],
            root + chord[2],
            next_root + (1 if rng.random() < 0.5 else -1),
        )
        for beat, midi in enumerate(walk):
            bass = _harmonics(_hz(tonic + midi - 24), bass_len, (1.0, 0.45, 0.15))
            loop.add(bass * _env(bass_len, 0.004, 0.35), loop.at(bar, 4 * beat), 0.55)
        comp = sum(
            _harmonics(_hz(tonic + root + iv), comp_len, (1.0, 0.35, 0.12, 0.05)) for iv in chord
        ) * _env(comp_len, 0.004, 0.35)
        for s in (6, 14) if rng.random() < 0.5 else (2, 10):
            loop.add(comp, loop.at(bar, s, swing), 0.07, wide=True)
        for s in (0, 4, 6, 8, 12, 14):  # ding, ding-da, ding, ding-da
            loop.add(_ride(), loop.at(bar, s, swing), 0.25, wide=True)
        for s in (4, 12):  # hi-hat foot on 2 and 4
            loop.add(_hat(), loop.at(bar, s), 0.25)


def _pop(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    prog = PROGRESSIONS[rng.integers(2)]  # major: I-V-vi-IV or I-IV-V-IV
    chord_len = loop.steps(4)
    lead_len = loop.steps(2)
    bass_len = loop.steps(4)
    piano_amps = tuple(1.0 / k for k in range(1, 9))
    for bar, (root, quality) in enumerate(prog[: loop.bars]):
        chord = sum(_harmonics(_hz(tonic + root + iv), chord_len, piano_amps) for iv in quality)
        chord *= _env(chord_len, 0.003, 0.4)
        bass = (
            _osc("sine", _hz(tonic + root - 12), bass_len)
            + 0.3 * _osc("tri", _hz(tonic + root - 12), bass_len)
        ) * _env(bass_len, 0.003, 0.3)
        for beat in range(4):
            loop.add(chord, loop.at(bar, 4 * beat), 0.09, wide=True)
            loop.add(bass, loop.at(bar, 4 * beat), 0.4)
        for s in range(0, 16, 2):
            if rng.random() < 0.75:
                midi = tonic + 12 + root + PENTATONIC[rng.integers(len(PENTATONIC))]
                lead = (
                    _osc("square", _hz(midi), lead_len) * 0.35
                    + _harmonics(_hz(midi), lead_len, (1.0,), vibrato=0.005)
                ) * _env(lead_len, 0.01, 0.25)
                loop.add(lead, loop.at(bar, s), 0.16)
    _drums(
        loop,
        kicks=(0, 8) if rng.random() < 0.5 else (0, 6, 8),
        snares=(4, 12),
        claps=(4, 12),
        hats=range(0, 16, 2),
        level=0.9,
    )


def _experimental(loop: _Loop, tonic: int, rng: np.random.Generator) -> None:
    # Events at random times (no grid): density follows the tempo.
    beats = loop.n / (4 * loop.step)
    for _ in range(int(beats * rng.uniform(1.0, 1.6))):
        start = int(rng.integers(loop.n))
        kind = rng.integers(3)
        if kind == 0:  # noise burst, white or brown
            n = int(rng.uniform(0.05, 0.6) * SR)
            noise = rng.standard_normal(n)
            if rng.random() < 0.5:
                noise = np.cumsum(noise)
                noise -= np.linspace(noise[0], noise[-1], n)
                noise /= np.abs(noise).max() + 1e-9
            loop.add(
                noise * _env(n, 0.002, n / SR / 3),
                start,
                rng.uniform(0.25, 0.6),
                wide=bool(rng.integers(2)),
            )
        elif kind == 1:  # high glitch blip
            n = int(rng.uniform(0.02, 0.08) * SR)
            blip = _osc("square", rng.uniform(1500, 7000), n) * _env(n, 0.001, 0.02)
            loop.add(blip, start, 0.3, wide=True)
        else:  # ring-modulated tone
            n = int(rng.uniform(0.2, 0.9) * SR)
            ring = _osc("sine", rng.uniform(200, 900), n) * _osc("sine", rng.uniform(30, 300), n)
            loop.add(ring * _sustain(n, 0.02, 0.1), start, 0.3, wide=True)
    drone = sum(_osc("sine", _hz(tonic - 12) * d, loop.n) for d in (1.0, 1.007, 1.5))
    loop.add(drone, 0, 0.06, wide=True)


_STYLE_RENDERERS: dict[str, Callable[[_Loop, int, np.random.Generator], None]] = {
    "rock": _rock,
    "electronic": _electronic,
    "hiphop": _hiphop,
    "folk": _folk,
    "classical": _classical,
    "jazz": _jazz,
    "pop": _pop,
    "experimental": _experimental,
}


@functools.lru_cache(maxsize=128)
def _response(n: int, style: str, tone: str | None) -> np.ndarray | None:
    """The loop's filter on rfft bins, or None where it would change nothing."""
    grid = np.linspace(0.0, SR / 2, 4097)
    coarse = _tone_response(grid, style, tone)
    if np.allclose(coarse, 1.0):
        return None
    # The responses are smooth: interpolating a coarse grid is exact enough and 5x cheaper.
    return _readonly(np.interp(np.fft.rfftfreq(n, 1.0 / SR), grid, coarse).astype(np.float32))


def render_loop(params: AudioParams) -> np.ndarray:
    """One seamless loop of the track: int16 array (n, 2)."""
    if params.style not in _STYLE_RENDERERS:
        raise ValueError(f"unknown style {params.style!r}; expected one of {STYLES}")
    rng = np.random.default_rng([params.seed, 2, params.track_id])
    bpm = _bpm(params, rng)
    # Loops of 4 to 7 s: they cover the 5-s window the pipeline reads and keep the FFTs short.
    loop = _Loop(_step_samples(bpm), rng, bars=4 if bpm >= 128 else 2)
    octave = {"low": -12, "high": 12}.get(params.register or "", 0)
    tonic = int(48 + rng.integers(12) + octave)  # C3..B3, an octave down or up
    _STYLE_RENDERERS[params.style](loop, tonic, rng)

    buses = np.stack([loop.center, loop.wide]).astype(np.float32)
    gain = _response(loop.n, params.style, params.tone)
    if gain is not None:  # circular filtering: exact for a loop
        buses = np.fft.irfft(np.fft.rfft(buses, axis=1) * gain, loop.n, axis=1)
    center, wide = buses
    haas = int(0.012 * SR)  # the right channel hears the wide bus 12 ms later
    stereo = np.stack([center + wide, center + np.roll(wide, haas)], axis=1)
    if params.tone == "warm":
        stereo = np.tanh(1.8 * stereo / (np.abs(stereo).max() + 1e-9))
    if params.tone == "lo-fi":
        stereo /= np.abs(stereo).max() + 1e-9
        stereo += 0.012 * _noise(2 * loop.n, 5).reshape(loop.n, 2)  # tape hiss
        crackles = rng.integers(loop.n, size=int(8 * loop.n / SR))
        stereo[crackles] += rng.choice((-0.5, 0.5), size=(len(crackles), 1))
    stereo *= 0.89 * 32767.0 / (np.abs(stereo).max() + 1e-9)
    return np.round(stereo).astype("<i2")


def render_clip(params: AudioParams, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """The clip as int16 PCM (n, 2): the loop tiled to ``seconds``."""
    n = max(0, round(seconds * SR))
    if n == 0:
        return np.zeros((0, 2), "<i2")
    loop = render_loop(params)
    return np.tile(loop, (-(-n // len(loop)), 1))[:n]


# --------------------------------------------------------------------------- metadata

LICENSES = (
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution-Noncommercial-No Derivative Works 3.0 United States",
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
    "Attribution 4.0 International",
    "Attribution-ShareAlike 3.0 United States",
    "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0",
    "Public Domain Mark 1.0",
    "CC0 1.0 Universal",
)
PLACES = (
    ("Richmond, VA", 37.5407246, -77.4360481),
    ("Brooklyn, NY", 40.6781784, -73.9441579),
    ("Montréal, Québec", 45.5016889, -73.567256),
    ("Berlin, Germany", 52.52000659999999, 13.404954),
    ("São Paulo", -23.5505199, -46.6333094),
    ("Tokyo", 35.6894875, 139.6917064),
    ("Reykjavík", 64.146582, -21.9426354),
    ("Portland, OR", 45.5230622, -122.6764816),
)
TITLE_WORDS_A = (
    "Electric", "Midnight", "Silent", "Golden", "Broken", "Velvet", "Hollow", "Neon", "Paper",
    "Crimson", "Lonely", "Northern", "Wandering", "Déjà", "Naïve", "Frozen", "Última",
    "Søndag", "Sleepy", "Distant",
)  # fmt: skip
TITLE_WORDS_B = (
    "Avenue", "Garden", "River", "Machine", "Summer", "Lights", "Ghosts", "Highway", "Café",
    "Mirrors", "Signal", "Harbor", "Vu", "Parade", "Canción", "Dreams", "Static", "Forest",
    "Ocean", "Morning",
)  # fmt: skip
UNICODE_TITLES = ("夜の街", "Смерч над морем", "Ölüdeniz", "Ça va, ça vient", "Niño Perdido")
ARTIST_FIRST = ("Kurt", "Nicky", "Lúcia", "Jökull", "Zoë", "Ana", "Marek", "Yuki", "Sam", "Oumou")
ARTIST_LAST = ("Vile", "Cook", "Ørsted", "Wiśniewski", "Moreau", "Tanaka", "Okafor", "Ferreira")
BAND_WORDS = ("Owls", "Satellites", "Ghosts", "Machines", "Tigers", "Pilots", "Lanterns", "Wolves")
BAND_ADJ = ("Velvet", "Quiet", "Electric", "Paper", "Ñandú", "Mëtal", "Hollow", "Golden")
UNICODE_ARTISTS = ("空の音", "Ясная Поляна", "Sigrún & Ómar", "Los Niños del Sur", "Mø Kollektiv")
NOISE_TAGS = (
    "netlabel", "free download", "creative commons", "diy", "home recording", "2009",
    "bandcamp", "wfmu", "ccmixter", "café", "live session", "demo",
)  # fmt: skip
# A tag with both quote characters: its repr needs backslash escapes.
ESCAPED_TAG = """it's "free" music"""


@dataclass
class TrackPlan:
    """One track: its tracks.csv record and how its clip is made."""

    track_id: int
    row: dict[tuple[str, str], object]
    params: AudioParams
    encoding: tuple[str, int]  # ("cbr", kbps) or ("vbr", quality)
    id3_version: int
    defect: str | None = None

    @property
    def title(self) -> str:
        return str(self.row[("track", "title")] or "")

    @property
    def artist(self) -> str:
        return str(self.row[("artist", "name")] or "")


@dataclass
class _Artist:
    artist_id: int
    name: str
    style: str
    row: dict[tuple[str, str], object]
    albums: list[dict[tuple[str, str], object]] = field(default_factory=list)
    album_track_counts: list[int] = field(default_factory=list)


def _fmt_date(moment: dt.datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else None


def _random_moment(rng: np.random.Generator, start: dt.datetime, days: int) -> dt.datetime:
    return start + dt.timedelta(seconds=int(rng.integers(days * 86_400)))


def _pick(rng: np.random.Generator, items: Sequence[object]) -> object:
    return items[int(rng.integers(len(items)))]


def _track_ids(n: int, rng: np.random.Generator) -> list[int]:
    """Sparse increasing ids from 2 (like FMA's), spanning at least folders 000 and 001."""
    mean_gap = max(4, math.ceil(1500 / n))
    gaps = rng.integers(1, 2 * mean_gap, size=n - 1)
    ids = [2, *(2 + np.cumsum(gaps)).tolist()]
    if ids[-1] < 1000:
        ids[-1] = 1000 + int(rng.integers(1, 500))
    return [int(i) for i in ids]


def _make_artist(index: int, style: str, rng: np.random.Generator) -> _Artist:
    artist_id = 1 + index * 7 + int(rng.integers(7))
    kind = rng.random()
    if kind < 0.15:
        name = str(_pick(rng, UNICODE_ARTISTS))
        members = None
    elif kind < 0.55:
        name = f"The {_pick(rng, BAND_ADJ)} {_pick(rng, BAND_WORDS)}"
        count = int(rng.integers(2, 5))
        members = "\n".join(
            f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}" for _ in range(count)
        )
    else:
        name = f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}"
        members = None
    if rng.random() < 0.2:
        name = f"{name} {index}"  # keeps most names distinct at scale
    place, lat, lon = PLACES[int(rng.integers(len(PLACES)))]
    has_place = rng.random() < 0.7
    created = _random_moment(rng, dt.datetime(2008, 11, 25), 2400)
    top_title = GENRE_BY_ID[TOP_OF_STYLE[style]][2]
    bio = (
        f'<p>{name} makes {top_title.lower()} music in {place}, "mostly at night", '
        f"with friends, tape machines and whatever is around.</p>\n"
        f'<p>Contact: <a href="mailto:booking@example.org">booking</a> &amp; more.</p>'
        if rng.random() < 0.8
        else None
    )
    slug = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()) or f"a{artist_id}"
    row: dict[tuple[str, str], object] = {
        ("artist", "active_year_begin"): f"{int(rng.integers(1995, 2012))}-01-01 00:00:00"
        if rng.random() < 0.5
        else None,
        ("artist", "active_year_end"): f"{int(rng.integers(2012, 2017))}-01-01 00:00:00"
        if rng.random() < 0.1
        else None,
        ("artist", "associated_labels"): "Azillion Records, Free Range"
        if rng.random() < 0.2
        else None,
        ("artist", "bio"): bio,
        ("artist", "comments"): int(rng.integers(0, 4)),
        ("artist", "date_created"): _fmt_date(created),
        ("artist", "favorites"): int(rng.integers(0, 60)),
        ("artist", "id"): artist_id,
        ("artist", "latitude"): lat if has_place else None,
        ("artist", "location"): place if has_place else None,
        ("artist", "longitude"): lon if has_place else None,
        ("artist", "members"): members,
        ("artist", "name"): name,
        ("artist", "related_projects"): "Side Project, Another Band"
        if rng.random() < 0.1
        else None,
        # FMA's artist tags often just repeat the artist's name.
        ("artist", "tags"): [name.lower()] + (["diy"] if rng.random() < 0.3 else []),
        ("artist", "website"): f"http://www.{slug}.com" if rng.random() < 0.6 else None,
        ("artist", "wikipedia_page"): None,
    }
    artist = _Artist(artist_id, name, style, row)
    for _ in range(int(rng.integers(1, 3))):
        album_id = 1 + int(rng.integers(1, 25_000))
        album_created = created + dt.timedelta(days=int(rng.integers(0, 400)))
        title = f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"
        information = (
            f'<p>Recorded live at "The Basement", {album_created.year}.</p>\r\n'
            f"<p>Mixed by {_pick(rng, ARTIST_FIRST)}, mastered by nobody.</p>"
            if rng.random() < 0.5
            else "<p></p>"
        )
        artist.albums.append(
            {
                ("album", "comments"): int(rng.integers(0, 3)),
                ("album", "date_created"): _fmt_date(album_created),
                (
                    "album",
                    "date_released",
                ): f"{album_created.year}-{album_created.month:02d}-01 00:00:00"
                if rng.random() < 0.7
                else None,
                ("album", "engineer"): None,
                ("album", "favorites"): int(rng.integers(0, 12)),
                ("album", "id"): album_id,
                ("album", "information"): information,
                ("album", "listens"): int(rng.lognormal(7, 1.2)),
                ("album", "producer"): f"{_pick(rng, ARTIST_FIRST)} {_pick(rng, ARTIST_LAST)}"
                if rng.random() < 0.15
                else None,
                ("album", "tags"): [],
                ("album", "title"): f"{name} - {title}" if rng.random() < 0.3 else title,
                ("album", "tracks"): 0,  # filled in once tracks are assigned
                ("album", "type"): str(
                    _pick(rng, ("Album", "Album", "Single Tracks", "Live Performance"))
                ),
            }
        )
        artist.album_track_counts.append(0)
    return artist


_NO_ALBUM: dict[tuple[str, str], object] = {
    ("album", "comments"): -1,
    ("album", "date_created"): None,
    ("album", "date_released"): None,
    ("album", "engineer"): None,
    ("album", "favorites"): -1,
    ("album", "id"): -1,
    ("album", "information"): None,
    ("album", "listens"): -1,
    ("album", "producer"): None,
    ("album", "tags"): [],
    ("album", "title"): None,
    ("album", "tracks"): -1,
    ("album", "type"): None,
}


def _descriptive_tags(rng: np.random.Generator) -> list[str]:
    """Tempo, tone and register tags (each present or not); ~8 % of tracks get none."""
    if rng.random() < 0.08:
        return []
    tags: list[str] = []
    if rng.random() < 0.85:
        tags.append(str(_pick(rng, TEMPO_TAGS)))
    if rng.random() < 0.75:
        tags.append(str(_pick(rng, TONE_TAGS)))
    if rng.random() < 0.6:
        tags.append(str(_pick(rng, REGISTER_TAGS)))
    return tags


def plan_dataset(n_tracks: int, seed: int) -> list[TrackPlan]:
    """All tracks' metadata, audio parameters, encodings and defects (no I/O)."""
    if not MIN_TRACKS <= n_tracks <= MAX_TRACKS:
        raise ValueError(
            f"--tracks must be between {MIN_TRACKS} and {MAX_TRACKS} (got {n_tracks}): the demo "
            f"dataset always holds {len(DEFECT_KINDS)} defective tracks plus playable ones"
        )
    rng = np.random.default_rng([seed, 1])
    ids = _track_ids(n_tracks, rng)
    # Balanced genres: a shuffled cycle over the eight styles.
    styles = [STYLES[i % len(STYLES)] for i in range(n_tracks)]
    rng.shuffle(styles)
    per_artist = 6
    artists: dict[str, list[_Artist]] = {s: [] for s in STYLES}
    artist_count = 0
    defect_positions = rng.choice(n_tracks, size=len(DEFECT_KINDS), replace=False)
    defect_at = {int(p): kind for p, kind in zip(defect_positions, DEFECT_KINDS, strict=True)}
    playable = [i for i in range(n_tracks) if i not in defect_at]
    quirks = (
        "no_title",
        "quoted_title",
        "unicode_title",
        "escaped_tag",
        "no_genre_top",
        "no_license",
        "wrong_duration",
    )
    playable_encodings = dict(zip(playable, _encodings(len(playable), rng), strict=True))
    quirk_order = rng.permutation(playable).tolist()
    quirk_at: dict[int, set[str]] = {}
    for k, quirk in enumerate(quirks):
        quirk_at.setdefault(int(quirk_order[k % len(quirk_order)]), set()).add(quirk)

    plans: list[TrackPlan] = []
    for i, track_id in enumerate(ids):
        style = styles[i]
        pool = artists[style]
        if not pool or (len(pool) * per_artist < (i + 1) / len(STYLES) and rng.random() < 0.7):
            pool.append(_make_artist(artist_count, style, rng))
            artist_count += 1
        artist = pool[int(rng.integers(len(pool)))]
        track_quirks = quirk_at.get(i, set())

        # Genres: a sub-genre or the root; some tracks also sit in a second root genre
        # (FMA leaves genre_top empty for those). The second genre has a larger id, so
        # the first listed genre is always the one the audio follows.
        top = TOP_OF_STYLE[style]
        main = int(_pick(rng, (top, *SUBGENRES[top]))) if rng.random() < 0.6 else top
        genres = [main]
        if "no_genre_top" in track_quirks or rng.random() < 0.2:
            others = [g[0] for g in GENRES if g[0] > main and g[3] != top]
            genres.append(int(_pick(rng, others)))
        genres_all = sorted({a for g in genres for a in genre_ancestors(g)})
        roots = {GENRE_BY_ID[g][3] for g in genres}
        genre_top = GENRE_BY_ID[top][2] if len(roots) == 1 else None

        tags = _descriptive_tags(rng)
        noise = [str(_pick(rng, NOISE_TAGS))] if rng.random() < 0.35 else []
        if rng.random() < 0.1:
            noise.append(GENRE_BY_ID[top][2].lower())  # a genre name as a tag, as on FMA
        if "escaped_tag" in track_quirks:
            noise.insert(0, ESCAPED_TAG)
        track_tags = tags + noise

        if "no_title" in track_quirks:
            title = None
        elif "quoted_title" in track_quirks:
            title = 'Hello, "World" (Live, 2009)'
        elif "unicode_title" in track_quirks or rng.random() < 0.1:
            title = str(_pick(rng, UNICODE_TITLES))
        else:
            title = f"{_pick(rng, TITLE_WORDS_A)} {_pick(rng, TITLE_WORDS_B)}"

        album_index = int(rng.integers(len(artist.albums)))
        if rng.random() < 0.08:
            album: Mapping[tuple[str, str], object] = _NO_ALBUM
            number = -1
        else:
            album = artist.albums[album_index]
            artist.album_track_counts[album_index] += 1
            number = artist.album_track_counts[album_index]
        created = _random_moment(rng, dt.datetime(2008, 11, 26), 2600)
        defect = defect_at.get(i)
        encoding = DEFECT_ENCODINGS[defect] if defect else playable_encodings[i]
        row: dict[tuple[str, str], object] = {
            **album,
            **artist.row,
            ("set", "split"): None,  # assigned below
            ("set", "subset"): None,
            ("track", "bit_rate"): encoding[1] * 1000 if encoding[0] == "cbr" else -1,
            ("track", "comments"): int(rng.integers(0, 3)),
            ("track", "composer"): artist.name if rng.random() < 0.05 else None,
            ("track", "date_created"): _fmt_date(created),
            (
                "track",
                "date_recorded",
            ): f"{created.year}-{created.month:02d}-{created.day:02d} 00:00:00"
            if rng.random() < 0.1
            else None,
            ("track", "duration"): 18_350
            if "wrong_duration" in track_quirks
            else int(rng.integers(90, 420)),
            ("track", "favorites"): int(rng.integers(0, 9)),
            ("track", "genre_top"): genre_top,
            ("track", "genres"): genres,
            ("track", "genres_all"): genres_all,
            ("track", "information"): "<p>Taken from the &quot;Basement Tapes&quot;.</p>"
            if rng.random() < 0.05
            else None,
            ("track", "interest"): int(rng.lognormal(7, 1)),
            ("track", "language_code"): "en" if rng.random() < 0.4 else None,
            ("track", "license"): None
            if "no_license" in track_quirks
            else str(_pick(rng, LICENSES)),
            ("track", "listens"): int(rng.lognormal(6.5, 1.2)),
            ("track", "lyricist"): None,
            ("track", "number"): number,
            ("track", "publisher"): None,
            ("track", "tags"): track_tags,
            ("track", "title"): title,
        }
        plans.append(
            TrackPlan(
                track_id=track_id,
                row=row,
                params=AudioParams.from_metadata(track_id, genres, track_tags, seed),
                encoding=encoding,
                id3_version=4 if rng.random() < 0.7 else 3,
                defect=defect,
            )
        )
    for artist_list in artists.values():
        for artist in artist_list:
            for album, count in zip(artist.albums, artist.album_track_counts, strict=True):
                album[("album", "tracks")] = count
    _assign_sets(plans, rng)
    return plans


# Ten encodings, dealt in shuffled blocks so every small dataset mixes CBR rates and VBR.
ENCODING_CYCLE: tuple[tuple[str, int], ...] = (
    ("cbr", 320), ("cbr", 320), ("cbr", 320), ("cbr", 256), ("cbr", 256),
    ("cbr", 192), ("cbr", 128), ("cbr", 128), ("vbr", 0), ("vbr", 4),
)  # fmt: skip
DEFECT_ENCODINGS = {
    DEFECT_EMPTY: ("cbr", 128),
    DEFECT_SHORT: ("cbr", 320),
    DEFECT_TRUNCATED: ("cbr", 192),
    DEFECT_MISSING: ("cbr", 256),
}


def _encodings(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    dealt: list[tuple[str, int]] = []
    while len(dealt) < n:
        dealt += [ENCODING_CYCLE[i] for i in rng.permutation(len(ENCODING_CYCLE))]
    return dealt[:n]


def _assign_sets(plans: list[TrackPlan], rng: np.random.Generator) -> None:
    """80/10/10 training/validation/test, stratified by style; defects stay in training.

    ``set.subset`` is the smallest FMA subset a track is in: tracks without a
    genre_top are only in large; Jazz and Classical (absent from FMA's small) in medium.
    """
    playable = [p for p in plans if p.defect is None]
    order = sorted(playable, key=lambda p: (p.params.style, rng.random()))
    for k, plan in enumerate(order):
        slot = k % 10
        plan.row[("set", "split")] = (
            "validation" if slot == 8 else "test" if slot == 9 else "training"
        )
    for plan in plans:
        if plan.defect is not None:
            plan.row[("set", "split")] = "training"
        if plan.row[("track", "genre_top")] is None:
            subset = "large"
        elif plan.params.style in ("jazz", "classical") or rng.random() < 0.3:
            subset = "medium"
        else:
            subset = "small"
        plan.row[("set", "subset")] = subset


def _cell(value: object) -> str:
    """A value as pandas' to_csv writes it (lists as Python reprs, None as empty)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return repr(value)
    return str(value)


def tracks_csv_text(plans: Sequence[TrackPlan]) -> str:
    """tracks.csv as FMA wrote it: three header lines, then one record per track."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["", *(group for group, _f, _k in FMA_COLUMNS)])
    writer.writerow(["", *(name for _g, name, _k in FMA_COLUMNS)])
    writer.writerow(["track_id", *([""] * len(FMA_COLUMNS))])
    for plan in plans:
        writer.writerow([plan.track_id, *(_cell(plan.row[(g, f)]) for g, f, _k in FMA_COLUMNS)])
    return buf.getvalue()


def genres_csv_text(plans: Sequence[TrackPlan]) -> str:
    """genres.csv: ``genre_id,#tracks,parent,title,top_level``; #tracks counts genres_all."""
    counts = {g[0]: 0 for g in GENRES}
    for plan in plans:
        for gid in plan.row[("track", "genres_all")]:  # type: ignore[union-attr]
            counts[gid] += 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
    for gid, parent, title, top in GENRES:
        writer.writerow([gid, counts[gid], parent, title, top])
    return buf.getvalue()


# --------------------------------------------------------------------------- MP3


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the MPEG-1 Layer III frames after the ID3v2 tag.

    The last entry may run past the end of ``data`` (a truncated frame).
    """
    bitrates = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    rates = (44_100, 48_000, 32_000)
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = 0
        for byte in data[6:10]:
            size = (size << 7) | (byte & 0x7F)
        pos = 10 + size
    frames = []
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos : pos + 4], "big")
        if (h >> 21) & 0x7FF != 0x7FF or (h >> 19) & 3 != 3 or (h >> 17) & 3 != 1:
            break  # not an MPEG-1 Layer III header (end of audio, e.g. an ID3v1 tag)
        br_index, sr_index, padding = (h >> 12) & 0xF, (h >> 10) & 3, (h >> 9) & 1
        if br_index in (0, 15) or sr_index == 3:
            break
        length = 144_000 * bitrates[br_index] // rates[sr_index] + padding
        frames.append((pos, length))
        pos += length
    return frames


def _encode_args(plan: TrackPlan) -> list[str]:
    mode, value = plan.encoding
    rate = ["-b:a", f"{value}k"] if mode == "cbr" else ["-q:a", str(value)]
    tags: list[str] = []
    for key, text in (
        ("title", plan.title),
        ("artist", plan.artist),
        ("album", plan.row[("album", "title")]),
        ("genre", plan.row[("track", "genre_top")]),
    ):
        if text:
            tags += ["-metadata", f"{key}={text}"]
    number = plan.row[("track", "number")]
    if isinstance(number, int) and number > 0:
        tags += ["-metadata", f"track={number}"]
    return [
        "-c:a", "libmp3lame", *rate,
        # LAME's "fast, ok quality" algorithm: about 3x faster than the default here.
        "-compression_level", "7",
        "-id3v2_version", str(plan.id3_version), "-write_id3v1", "0",
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *tags,
    ]  # fmt: skip


def _run_ffmpeg(pcm: np.ndarray, out: Path, plan: TrackPlan) -> None:
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(SR), "-ac", "2", "-i", "pipe:0",
        *_encode_args(plan), "-f", "mp3", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=pcm.tobytes(), capture_output=True, timeout=300)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace")[-800:]
        raise DemoDataError(
            f"ffmpeg failed to encode track {plan.track_id} to {out} (exit {proc.returncode}): {tail}"
        )


def _write_clip(plan: TrackPlan, audio_root: Path) -> float:
    """Encode one track's clip (or its defect); returns the seconds of audio written."""
    if plan.defect == DEFECT_MISSING:
        return 0.0
    path = audio_path(audio_root, plan.track_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.defect == DEFECT_EMPTY:
        # What the encoder writes for no samples: ID3 tag + LAME info frame, no audio frames.
        _run_ffmpeg(np.zeros((0, 2), "<i2"), path, plan)
        return 0.0
    seconds = SHORT_CLIP_SECONDS if plan.defect == DEFECT_SHORT else CLIP_SECONDS
    if plan.defect is None:  # clip lengths vary by a few hundredths, as FMA's do
        jitter = np.random.default_rng([plan.params.seed, 3, plan.track_id]).uniform(-0.03, 0.03)
        seconds += float(jitter)
    _run_ffmpeg(render_clip(plan.params, seconds), path, plan)
    if plan.defect == DEFECT_TRUNCATED:
        data = path.read_bytes()
        frames = mp3_frames(data)
        offset, length = frames[len(frames) // 3]  # about 10 s in, cut inside a frame
        path.write_bytes(data[: offset + length // 2])
        return len(frames) // 3 * 1152 / SR
    return seconds


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DemoSummary:
    out_root: Path
    tracks_csv: Path
    genres_csv: Path
    audio_dir: Path
    n_tracks: int
    n_clips: int
    folders: tuple[str, ...]
    genre_counts: dict[str, int]
    defects: dict[str, int]
    seed: int
    audio_seconds: float
    elapsed_s: float

    def __str__(self) -> str:
        genres = ", ".join(f"{name} {count}" for name, count in self.genre_counts.items())
        defects = ", ".join(f"{kind} {tid:06d}" for kind, tid in self.defects.items())
        return (
            f"demo dataset (seed {self.seed}) written in {self.elapsed_s:.1f} s to {self.out_root}\n"
            f"  metadata: {self.tracks_csv} ({self.n_tracks} tracks), {self.genres_csv}\n"
            f"  audio:    {self.audio_dir} ({self.n_clips} MP3 files in folders "
            f"{', '.join(self.folders)}; {self.audio_seconds / 60:.1f} min of audio)\n"
            f"  genres:   {genres}\n"
            f"  defects:  {defects}"
        )


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _marker(seed: int, n_tracks: int, tracks_sha256: str | None = None) -> str:
    content: dict[str, object] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_tracks": n_tracks,
    }
    if tracks_sha256:
        content["tracks_csv_sha256"] = tracks_sha256
    return json.dumps(content, indent=2) + "\n"


def _is_demo_dir(directory: Path, tracks_csv: Path | None = None) -> bool:
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("generator") != GENERATOR:
        return False
    if tracks_csv is not None and tracks_csv.exists():
        digest = hashlib.sha256(tracks_csv.read_bytes()).hexdigest()
        return marker.get("tracks_csv_sha256") == digest
    return True


def check_replaceable(out_root: Path) -> None:
    """Refuse to replace metadata or audio that the generator did not write."""
    if out_root.exists() and not out_root.is_dir():
        raise DemoDataError(f"demo-data output {out_root} is a file, not a folder (--out)")
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    tracks_csv = metadata_dir / "tracks.csv"
    for directory, csv_path in ((metadata_dir, tracks_csv), (audio_dir, None)):
        if not directory.exists() or not any(directory.iterdir()):
            continue
        if not _is_demo_dir(directory, csv_path):
            what = csv_path if csv_path is not None and csv_path.exists() else directory
            raise DemoDataError(
                f"{what} exists and was not written by `clap-pipeline demo-data` (no matching "
                f"{MARKER_NAME} in {directory}): refusing to replace what may be a real FMA "
                "dataset. Pass another --out (or set CLAP_DATA_DIR), or move it away yourself."
            )


def write_demo_dataset(
    out_root: Path,
    n_tracks: int = 120,
    seed: int = 0,
    *,
    workers: int | None = None,
    log: Log | None = _stderr_log,
) -> DemoSummary:
    """Write the demo dataset under ``out_root`` (fma_metadata/, fma_audio/) atomically.

    Both folders are built in hidden temporary siblings and renamed into place, audio
    first, so a crash leaves the previous dataset (or none). Raises DemoDataError if
    ``out_root`` holds metadata or audio the generator did not write.
    """
    started = time.monotonic()
    out_root = Path(out_root)
    log = log or (lambda _message: None)
    plans = plan_dataset(n_tracks, seed)  # validates n_tracks before touching the disk
    check_replaceable(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    ffmpeg_exe()  # fail early and clearly when ffmpeg is missing
    workers = workers or len(os.sched_getaffinity(0)) + 1
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"

    with atomic_path(metadata_dir) as meta_tmp, atomic_path(audio_dir) as audio_tmp:
        audio_tmp.mkdir()
        audio_seconds = _encode_all(plans, audio_tmp, workers, log)
        (audio_tmp / MARKER_NAME).write_text(_marker(seed, n_tracks), encoding="utf-8")
        meta_tmp.mkdir()
        tracks_text = tracks_csv_text(plans).encode("utf-8")
        (meta_tmp / "tracks.csv").write_bytes(tracks_text)
        (meta_tmp / "genres.csv").write_text(genres_csv_text(plans), encoding="utf-8")
        digest = hashlib.sha256(tracks_text).hexdigest()
        (meta_tmp / MARKER_NAME).write_text(_marker(seed, n_tracks, digest), encoding="utf-8")
        # Leaving the block renames audio into place first, then the metadata.

    genre_counts: dict[str, int] = {}
    for plan in plans:
        name = GENRE_BY_ID[TOP_OF_STYLE[plan.params.style]][2]
        genre_counts[name] = genre_counts.get(name, 0) + 1
    with_files = [p for p in plans if p.defect != DEFECT_MISSING]
    return DemoSummary(
        out_root=out_root,
        tracks_csv=metadata_dir / "tracks.csv",
        genres_csv=metadata_dir / "genres.csv",
        audio_dir=audio_dir,
        n_tracks=len(plans),
        n_clips=len(with_files),
        folders=tuple(sorted({folder_of(p.track_id) for p in with_files})),
        genre_counts=dict(sorted(genre_counts.items())),
        defects={p.defect: p.track_id for p in plans if p.defect is not None},
        seed=seed,
        audio_seconds=audio_seconds,
        elapsed_s=time.monotonic() - started,
    )


def _encode_all(plans: Sequence[TrackPlan], audio_root: Path, workers: int, log: Log) -> float:
    """Encode every clip with a pool of threads, each driving one ffmpeg at a time.

    Threads suffice: the encoder runs in its own process, and synthesis is a small
    share of the work.
    """
    total = len(plans)
    done = 0
    seconds = 0.0
    started = last_report = time.monotonic()
    lock = threading.Lock()
    log(f"demo-data: encoding {total} clips with {workers} parallel ffmpeg processes")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-encode") as pool:
        futures = [pool.submit(_write_clip, plan, audio_root) for plan in plans]
        try:
            for future in as_completed(futures):
                clip_seconds = future.result()
                with lock:
                    done += 1
                    seconds += clip_seconds
                now = time.monotonic()
                if now - last_report >= 5.0 or done == total:
                    last_report = now
                    rate = done / max(now - started, 1e-9)
                    eta = (total - done) / rate if rate else float("inf")
                    log(f"demo-data: {done}/{total} clips, {rate:.1f} clips/s, ETA {eta:.0f} s")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return seconds
