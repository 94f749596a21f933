"""Demo clips rendered from real instrument samples: General MIDI arrangements through FluidSynth.

The synthesiser in ``synth.py`` gives each genre a distinct tone recipe; this renderer
makes music that sounds like music instead. Per track it writes a small General-MIDI
arrangement from the track's genre and tags — tempo (the tempo tags), key and register,
a chord progression of the genre, a drum groove on the genre's kit, and the 2–4
instruments named in the track's tags (``piano``, ``acoustic guitar``, ``strings``,
``drums``…) — and plays it through FluidSynth with a GM soundfont (Debian's
``fluid-soundfont-gm``). The tone tags shape the result as in ``synth.py``.

Nothing here decides what the model sees: the arrangement follows tracks.csv (genre and
tags), and the pipeline reads only the prompts and the audio.

Everything is a function of (seed, track_id, style, tags), like the synthesiser.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clap_pipeline.demo.synth import (
    CLIP_SECONDS,
    SR,
    STYLE_BPM,
    TAG_BPM,
    AudioParams,
    _response,
)

# Where Debian's and other distributions' GM soundfonts live (the first that exists wins).
SOUNDFONT_PATHS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
INSTALL_HINT = (
    "install Debian's packages `fluidsynth` and `fluid-soundfont-gm` "
    "(apt-get install fluidsynth fluid-soundfont-gm), or use the synthesiser (--renderer synth)"
)
RENDERERS = ("synth", "fluidsynth")  # how demo clips are made: synth.py or this module
TICKS = 480  # MIDI ticks per quarter note
DRUM_CHANNEL = 9


class RenderError(RuntimeError):
    """FluidSynth or the soundfont is missing, or a render failed; names what to fix."""


@dataclass(frozen=True)
class Instrument:
    word: str  # the tag that names it in tracks.csv (and so in the prompt)
    program: int  # General MIDI program, 0-based
    role: str  # chords / bass / lead / pad / drums
    octave: int = 0  # where the role's notes sit, relative to the tonic octave


# The instruments a genre plays, by role. A track takes the genre's drums (when it has
# any), one bass, one chord instrument and sometimes a lead: 2–4 instruments.
INSTRUMENTS: dict[str, Instrument] = {
    i.word: i
    for i in (
        Instrument("piano", 0, "chords"),
        Instrument("electric piano", 4, "chords"),
        Instrument("organ", 16, "chords"),
        Instrument("acoustic guitar", 25, "chords"),
        Instrument("nylon guitar", 24, "chords"),
        Instrument("electric guitar", 27, "chords"),
        Instrument("distorted guitar", 30, "chords", -1),
        Instrument("banjo", 105, "chords"),
        Instrument("harp", 46, "chords"),
        Instrument("vibraphone", 11, "chords", 1),
        Instrument("strings", 48, "pad"),
        Instrument("synth pad", 89, "pad"),
        Instrument("choir", 52, "pad"),
        Instrument("bass", 33, "bass", -2),
        Instrument("upright bass", 32, "bass", -2),
        Instrument("synth bass", 38, "bass", -2),
        Instrument("cello", 42, "bass", -1),
        Instrument("violin", 40, "lead", 1),
        Instrument("fiddle", 110, "lead", 1),
        Instrument("flute", 73, "lead", 1),
        Instrument("clarinet", 71, "lead"),
        Instrument("saxophone", 65, "lead"),
        Instrument("trumpet", 56, "lead"),
        Instrument("harmonica", 22, "lead", 1),
        Instrument("synth lead", 81, "lead", 1),
        Instrument("drums", -1, "drums"),
    )
}
INSTRUMENT_WORDS = tuple(INSTRUMENTS)

# Per genre: (drum kit or None, basses, chord/pad instruments, leads).
STYLE_BAND: dict[str, tuple[int | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "rock": (16, ("bass",), ("distorted guitar", "electric guitar", "organ"), ("electric guitar",)),
    "electronic": (25, ("synth bass",), ("synth pad",), ("synth lead",)),
    "hiphop": (0, ("bass", "synth bass"), ("electric piano", "piano"), ("flute", "strings")),
    "folk": (None, ("upright bass",), ("acoustic guitar", "banjo"), ("fiddle", "harmonica")),
    "classical": (None, ("cello",), ("strings", "piano", "harp"), ("violin", "flute", "clarinet")),
    "jazz": (32, ("upright bass",), ("piano", "vibraphone"), ("saxophone", "trumpet")),
    "pop": (0, ("bass",), ("piano", "electric guitar"), ("synth lead", "vibraphone")),
    "experimental": (None, ("synth bass",), ("choir", "synth pad", "vibraphone"), ("synth lead",)),
}

# Chord progressions as (semitones above the tonic, chord tones above the root).
MAJOR, MINOR, DOM7, MIN7, MAJ7 = (0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 3, 7, 10), (0, 4, 7, 11)
PROGRESSIONS = {
    "rock": ((0, MAJOR), (7, MAJOR), (9, MINOR), (5, MAJOR)),
    "electronic": ((0, MINOR), (8, MAJOR), (3, MAJOR), (10, MAJOR)),
    "hiphop": ((0, MIN7), (5, MIN7), (0, MIN7), (8, MAJ7)),
    "folk": ((0, MAJOR), (5, MAJOR), (0, MAJOR), (7, MAJOR)),
    "classical": ((0, MINOR), (5, MINOR), (7, MAJOR), (0, MINOR)),
    "jazz": ((2, MIN7), (7, DOM7), (0, MAJ7), (9, DOM7)),
    "pop": ((0, MAJOR), (7, MAJOR), (9, MINOR), (5, MAJOR)),
    "experimental": ((0, (0, 1, 6)), (3, (0, 2, 6)), (11, (0, 1, 5)), (6, (0, 5, 6))),
}
# Drum grooves on a 16-step bar: GM note -> steps that hit.
KICK, SNARE, CLAP, HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 39, 42, 46, 51, 49
GROOVES: dict[str, dict[int, tuple[int, ...]]] = {
    "rock": {KICK: (0, 8, 10), SNARE: (4, 12), HAT: tuple(range(0, 16, 2))},
    "electronic": {KICK: (0, 4, 8, 12), CLAP: (4, 12), OPEN_HAT: (2, 6, 10, 14)},
    "hiphop": {KICK: (0, 7, 10), SNARE: (4, 12), HAT: tuple(range(0, 16, 2))},
    "jazz": {RIDE: (0, 4, 7, 8, 12, 15), HAT: (4, 12), KICK: (0,)},
    "pop": {KICK: (0, 6, 8), SNARE: (4, 12), HAT: tuple(range(16))},
}


def instruments_for(style: str, rng: np.random.Generator) -> list[str]:
    """The tracks' band: the genre's drums, a bass, a chord instrument, maybe a lead."""
    kit, basses, chords, leads = STYLE_BAND[style]
    band = [str(rng.choice(chords)), str(rng.choice(basses))]
    if kit is not None and rng.random() < 0.9:
        band.insert(0, "drums")
    if rng.random() < 0.6:
        lead = str(rng.choice(leads))
        if lead not in band:
            band.append(lead)
    return band


# --------------------------------------------------------------------------- MIDI


def _var_len(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(events: Sequence[tuple[int, bytes]], bpm: float) -> bytes:
    """A Standard MIDI File (format 0) of ``(tick, message)`` events and one tempo."""
    tempo = round(60_000_000 / bpm)
    body = bytearray(b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big"))
    last = 0
    for tick, message in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):
        body += _var_len(tick - last) + message
        last = tick
    body += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS)
    return header + b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def _note(events: list, channel: int, tick: int, length: int, pitch: int, velocity: int) -> None:
    pitch = int(np.clip(pitch, 0, 127))
    velocity = int(np.clip(velocity, 1, 127))
    events.append((tick, bytes((0x90 | channel, pitch, velocity))))
    events.append((tick + max(1, length), bytes((0x80 | channel, pitch, 0))))


def arrangement(params: AudioParams, seconds: float = CLIP_SECONDS) -> tuple[bytes, float]:
    """The track's arrangement as a MIDI file, and its tempo."""
    rng = np.random.default_rng([params.seed, 7, params.track_id])
    bpm = float(TAG_BPM.get(params.tempo or "", STYLE_BPM[params.style]) * rng.uniform(0.95, 1.05))
    octave = {"low": -12, "high": 12}.get(params.register or "", 0)
    tonic = int(48 + rng.integers(12) + octave)
    step = TICKS // 4  # a 16th note
    bars = int(np.ceil(seconds * bpm / 240)) + 1
    progression = PROGRESSIONS[params.style]
    band = [INSTRUMENTS[w] for w in params.instruments if w in INSTRUMENTS]
    events: list[tuple[int, bytes]] = []
    channel = 0
    for instrument in band:
        if instrument.role == "drums":
            continue
        events.append((0, bytes((0xC0 | channel, instrument.program))))
        for bar in range(bars):
            root, chord = progression[bar % len(progression)]
            _play(events, channel, instrument, params.style, bar * 16 * step, step,
                  tonic + root, chord, rng)  # fmt: skip
        channel += 1
    if any(i.role == "drums" for i in band):
        kit = STYLE_BAND[params.style][0] or 0
        events.append((0, bytes((0xC0 | DRUM_CHANNEL, kit))))
        groove = GROOVES.get(params.style, GROOVES["pop"])
        swing = step // 3 if params.style == "jazz" else 0
        for bar in range(bars):
            if bar % 4 == 0:
                _note(events, DRUM_CHANNEL, bar * 16 * step, step, CRASH, 90)
            for pitch, hits in groove.items():
                for s in hits:
                    tick = bar * 16 * step + s * step + (swing if s % 4 == 2 else 0)
                    _note(events, DRUM_CHANNEL, tick, step, pitch, int(rng.integers(80, 118)))
    return midi_file(events, bpm), bpm


def _play(
    events: list,
    channel: int,
    instrument: Instrument,
    style: str,
    start: int,
    step: int,
    root: int,
    chord: tuple[int, ...],
    rng: np.random.Generator,
) -> None:
    """One bar of one instrument: the role decides the rhythm, the genre its feel."""
    base = root + 12 * instrument.octave
    if instrument.role == "bass":
        walk = style == "jazz"
        for beat in range(4):
            pitch = base + (chord[beat % len(chord)] if walk else (0 if beat % 2 == 0 else 7))
            _note(events, channel, start + beat * 4 * step, 4 * step - 10, pitch, 96)
    elif instrument.role == "pad":
        for tone in chord:
            _note(events, channel, start, 16 * step - 20, base + tone, 70)
    elif instrument.role == "lead":
        scale = (0, 2, 4, 7, 9, 12, 14) if 4 in chord else (0, 3, 5, 7, 10, 12, 15)
        s = 0
        while s < 16:
            length = int(rng.choice((2, 2, 4, 4, 6)))
            if rng.random() < 0.8:
                pitch = base + 12 + int(rng.choice(scale))
                _note(events, channel, start + s * step, length * step - 10, pitch, 88)
            s += length
    elif style in ("folk", "classical") or instrument.word in ("harp", "nylon guitar"):
        tones = [base + t for t in chord] + [base + 12 + chord[0]]
        for s in range(0, 16, 2):  # fingerpicked / arpeggiated eighths
            _note(events, channel, start + s * step, 3 * step, tones[(s // 2) % len(tones)], 78)
    else:
        hits = (0, 6, 8, 14) if style in ("rock", "pop", "electronic") else (0, 3, 8, 11)
        for s in hits:
            for tone in chord:
                _note(events, channel, start + s * step, 2 * step, base + tone, 82)


# --------------------------------------------------------------------------- audio


def soundfont() -> Path:
    for path in SOUNDFONT_PATHS:
        if path.is_file():
            return path
    raise RenderError(f"no General MIDI soundfont found at {[str(p) for p in SOUNDFONT_PATHS]}: "
                      f"{INSTALL_HINT}")  # fmt: skip


def fluidsynth_exe() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RenderError(f"fluidsynth is not on PATH: {INSTALL_HINT}")
    return exe


def render_midi(midi: bytes, seconds: float) -> np.ndarray:
    """``seconds`` of the MIDI file played by FluidSynth: float32 stereo (n, 2)."""
    with tempfile.TemporaryDirectory(prefix="clap-render-") as tmp:
        mid, raw = Path(tmp) / "track.mid", Path(tmp) / "track.raw"
        mid.write_bytes(midi)
        cmd = [
            fluidsynth_exe(), "-ni", "-q", "-g", "0.6", "-r", str(SR), "-T", "raw",
            "-O", "s16", "-E", "little", "-F", str(raw), str(soundfont()), str(mid),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0 or not raw.exists():
            raise RenderError(f"fluidsynth failed (exit {done.returncode}): {done.stderr[-500:]}")
        pcm = np.frombuffer(raw.read_bytes(), dtype="<i2").reshape(-1, 2)
    n = round(seconds * SR)
    audio = np.zeros((n, 2), np.float32)
    audio[: min(n, len(pcm))] = pcm[:n] / 32768.0
    return audio


def render_track(params: AudioParams, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """The track as int16 PCM (n, 2), tone tags applied as the synthesiser applies them."""
    midi, _ = arrangement(params, seconds)
    audio = render_midi(midi, seconds)
    gain = _response(len(audio), params.style, params.tone)
    if gain is not None:
        audio = np.fft.irfft(np.fft.rfft(audio, axis=0) * gain[:, None], len(audio), axis=0)
    if params.tone == "warm":
        audio = np.tanh(1.8 * audio / (np.abs(audio).max() + 1e-9))
    if params.tone == "lo-fi":
        rng = np.random.default_rng([params.seed, 8, params.track_id])
        audio = audio / (np.abs(audio).max() + 1e-9)
        audio = audio + 0.012 * rng.standard_normal(audio.shape)  # tape hiss
    peak = np.abs(audio).max()
    if peak < 1e-6:
        raise RenderError(f"track {params.track_id}: fluidsynth rendered silence")
    audio = audio * (0.89 * 32767.0 / peak)
    return np.round(audio).astype("<i2")
