"""Synthesised music for the demo dataset: genre -> instruments and rhythm, tags -> tempo,
register and tone.

Each style is a small arrangement on a 16th-note grid (Rock: distorted saw power chords and a
backbeat; Electronic: square/saw arpeggio over four-on-the-floor; Hip-Hop: boom-bap and sub
bass; Folk: Karplus-Strong fingerpicking; Classical: soft strings; Jazz: swing ride and
walking bass; Pop: bright chords, lead and drums; Experimental: noise bursts and glitches off
the grid). Tags: ``slow``/``upbeat``/``fast`` set the tempo, ``low``/``high`` move pitched
parts an octave, ``bright``/``dark``/``warm``/``lo-fi`` filter (and saturate or add hiss).

A clip is one seamless loop of 2 or 4 bars (about 4 to 7 s, rendered circularly so the FFT
filters are exact) tiled to its length: cheap to make, and the 5-s window the pipeline reads
holds most or all of the arrangement. Everything is a function of (seed, track_id, style, tags).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SR = 44_100
# FMA's clips are 30 s; the pipeline reads only the first 5 s, so the demo writes 10-s
# clips (still valid MP3s in FMA's layout) at a third of the encoding cost.
CLIP_SECONDS = 10.0

STYLES = ("rock", "electronic", "hiphop", "folk", "classical", "jazz", "pop", "experimental")
TEMPO_TAGS = ("slow", "upbeat", "fast")
REGISTER_TAGS = ("low", "high")
TONE_TAGS = ("bright", "dark", "warm", "lo-fi")


@dataclass(frozen=True)
class AudioParams:
    """What the synthesiser needs to render one track."""

    style: str
    tempo: str | None = None  # slow / upbeat / fast / None (the style's own tempo)
    register: str | None = None  # low / high / None
    tone: str | None = None  # bright / dark / warm / lo-fi / None
    seed: int = 0
    track_id: int = 0
    # The rendered-instrument collection only (``rendered.py``): its tags' instruments.
    instruments: tuple[str, ...] = ()
    renderer: str = "synth"  # synth (this module) / fluidsynth (rendered.py)

    @classmethod
    def from_tags(cls, style: str, tags: Iterable[str], seed: int, track_id: int) -> AudioParams:
        """The first tempo, register and tone words among ``tags``; other tags do nothing."""
        words = [str(t).strip().lower() for t in tags]

        def first(choices: tuple[str, ...]) -> str | None:
            return next((w for w in words if w in choices), None)

        return cls(
            style, first(TEMPO_TAGS), first(REGISTER_TAGS), first(TONE_TAGS), seed, int(track_id)
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
    # Loops of about 4 to 7 s: they fill the 5-s window the pipeline reads, FFTs stay short.
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
