"""Demo clips rendered from real instrument samples: General MIDI arrangements through FluidSynth.

The synthesiser in ``synth.py`` gives each genre a distinct tone recipe; this renderer
makes music that sounds like music instead. Per track it writes a small General-MIDI
arrangement from the track's genre and tags — tempo (the tempo tags), key and register,
a chord progression of the genre, a drum groove on the genre's kit, and the 2–4
instruments named in the track's tags (``piano``, ``acoustic guitar``, ``strings``,
``drums``…) — and plays it through FluidSynth with a GM soundfont (Debian's
``fluid-soundfont-gm``). The tone tags shape the result as in ``synth.py``.

How a genre is arranged is a ``Scheme``: which instruments a genre's band draws from, its
chord progressions and drum grooves, how bass, chords and leads play, tempo, key and mix.
``BAND`` is the demo collection's; ``demo/schemes.py`` holds the others the stand-in's
pre-training corpus uses, and a soundfont can be named per render.

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


@dataclass(frozen=True)
class Scheme:
    """One way of arranging a genre; ``BAND`` (the demo's) has the defaults."""

    name: str
    band: dict[str, tuple[int | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]]
    progressions: dict[str, tuple[tuple[int, tuple[int, ...]], ...]]
    grooves: dict[str, dict[int, tuple[int, ...]]]  # style -> drum note -> steps; "pop" default
    tempo_scale: float = 1.0  # times the style's (or the tempo tag's) bpm
    transpose: int = 0  # semitones added to the tonic
    bass: str = "auto"  # auto (walking in jazz, else root-fifth) | octaves | syncopated | pedal
    comp: str = "auto"  # auto (arpeggios in folk/classical, else stabs) | strum | offbeat | sustain | arpeggio
    lead: str = "auto"  # auto (free phrases) | riff (a repeated motif) | long (held notes)
    velocity: float = 1.0  # scales every note's velocity
    mix: bool = False  # per-track channel volume, pan, reverb and chorus (MIDI CC 7/10/91/93)


def instruments_for(
    style: str, rng: np.random.Generator, scheme: Scheme | None = None
) -> list[str]:
    """The tracks' band: the genre's drums, a bass, a chord instrument, maybe a lead."""
    kit, basses, chords, leads = (scheme or BAND).band[style]
    band = [str(rng.choice(chords)), str(rng.choice(basses))]
    if kit is not None and rng.random() < 0.9:
        band.insert(0, "drums")
    if rng.random() < 0.6:
        lead = str(rng.choice(leads))
        if lead not in band:
            band.append(lead)
    return band


BAND = Scheme("band", STYLE_BAND, PROGRESSIONS, GROOVES)  # the demo collection's scheme


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


def _note(events: list, channel: int, tick: int, length: int, pitch: int, velocity: float) -> None:
    pitch = int(np.clip(pitch, 0, 127))
    velocity = int(np.clip(velocity, 1, 127))
    events.append((tick, bytes((0x90 | channel, pitch, velocity))))
    events.append((tick + max(1, length), bytes((0x80 | channel, pitch, 0))))


def arrangement(
    params: AudioParams, seconds: float = CLIP_SECONDS, scheme: Scheme | None = None
) -> tuple[bytes, float]:
    """The track's arrangement as a MIDI file, and its tempo."""
    events, bpm = arrangement_events(params, seconds, scheme or BAND)
    return midi_file(events, bpm), bpm


def _mix(events: list, channel: int, rng: np.random.Generator) -> None:
    """A channel's place in the mix: volume, pan, reverb and chorus sends."""
    for control, low, high in ((7, 55, 128), (10, 20, 108), (91, 0, 100), (93, 0, 60)):
        events.append((0, bytes((0xB0 | channel, control, int(rng.integers(low, high))))))


def arrangement_events(
    params: AudioParams, seconds: float, scheme: Scheme
) -> tuple[list[tuple[int, bytes]], float]:
    """(tick, MIDI message) events of the track's arrangement and its tempo (bpm)."""
    rng = np.random.default_rng([params.seed, 7, params.track_id])
    mixer = np.random.default_rng([params.seed, 11, params.track_id]) if scheme.mix else None
    bpm = float(TAG_BPM.get(params.tempo or "", STYLE_BPM[params.style]) * rng.uniform(0.95, 1.05))
    bpm *= scheme.tempo_scale
    octave = {"low": -12, "high": 12}.get(params.register or "", 0)
    tonic = int(48 + rng.integers(12) + octave) + scheme.transpose
    step = TICKS // 4  # a 16th note
    bars = int(np.ceil(seconds * bpm / 240)) + 1
    progression = scheme.progressions[params.style]
    band = [INSTRUMENTS[w] for w in params.instruments if w in INSTRUMENTS]
    events: list[tuple[int, bytes]] = []
    channel = 0
    for instrument in band:
        if instrument.role == "drums":
            continue
        events.append((0, bytes((0xC0 | channel, instrument.program))))
        if mixer is not None:
            _mix(events, channel, mixer)
        for bar in range(bars):
            root, chord = progression[bar % len(progression)]
            _play(events, channel, instrument, params.style, bar * 16 * step, step,
                  tonic + root, chord, rng, scheme)  # fmt: skip
        channel += 1
    if any(i.role == "drums" for i in band):
        kit = scheme.band[params.style][0] or 0
        events.append((0, bytes((0xC0 | DRUM_CHANNEL, kit))))
        if mixer is not None:
            _mix(events, DRUM_CHANNEL, mixer)
        groove = scheme.grooves.get(params.style, scheme.grooves["pop"])
        swing = step // 3 if params.style == "jazz" else 0
        for bar in range(bars):
            if bar % 4 == 0:
                _note(events, DRUM_CHANNEL, bar * 16 * step, step, CRASH, 90 * scheme.velocity)
            for pitch, hits in groove.items():
                for s in hits:
                    tick = bar * 16 * step + s * step + (swing if s % 4 == 2 else 0)
                    velocity = int(rng.integers(80, 118)) * scheme.velocity
                    _note(events, DRUM_CHANNEL, tick, step, pitch, velocity)
    return events, bpm


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
    scheme: Scheme | None = None,
) -> None:
    """One bar of one instrument: the role decides the rhythm, the genre its feel."""
    scheme = scheme or BAND
    base = root + 12 * instrument.octave
    v = scheme.velocity

    def note(tick: int, length: int, pitch: int, velocity: float) -> None:
        _note(events, channel, start + tick, length, pitch, velocity * v)

    if instrument.role == "bass" and scheme.bass != "auto":
        _play_bass(note, scheme.bass, step, base, chord)
    elif instrument.role in ("chords", "pad") and scheme.comp not in ("auto", "arpeggio"):
        _play_comp(note, scheme.comp, step, base, chord)
    elif instrument.role == "lead" and scheme.lead != "auto":
        _play_lead(note, scheme.lead, step, base, chord, rng)
    elif instrument.role == "chords" and scheme.comp == "arpeggio":
        tones = [base + t for t in chord] + [base + 12 + chord[0]]
        for s in range(16):  # sixteenth-note arpeggios
            note(s * step, 2 * step, tones[s % len(tones)], 74)
    elif instrument.role == "bass":
        walk = style == "jazz"
        for beat in range(4):
            pitch = base + (chord[beat % len(chord)] if walk else (0 if beat % 2 == 0 else 7))
            note(beat * 4 * step, 4 * step - 10, pitch, 96)
    elif instrument.role == "pad":
        for tone in chord:
            note(0, 16 * step - 20, base + tone, 70)
    elif instrument.role == "lead":
        scale = (0, 2, 4, 7, 9, 12, 14) if 4 in chord else (0, 3, 5, 7, 10, 12, 15)
        s = 0
        while s < 16:
            length = int(rng.choice((2, 2, 4, 4, 6)))
            if rng.random() < 0.8:
                pitch = base + 12 + int(rng.choice(scale))
                note(s * step, length * step - 10, pitch, 88)
            s += length
    elif style in ("folk", "classical") or instrument.word in ("harp", "nylon guitar"):
        tones = [base + t for t in chord] + [base + 12 + chord[0]]
        for s in range(0, 16, 2):  # fingerpicked / arpeggiated eighths
            note(s * step, 3 * step, tones[(s // 2) % len(tones)], 78)
    else:
        hits = (0, 6, 8, 14) if style in ("rock", "pop", "electronic") else (0, 3, 8, 11)
        for s in hits:
            for tone in chord:
                note(s * step, 2 * step, base + tone, 82)


def _play_bass(note, kind: str, step: int, base: int, chord: tuple[int, ...]) -> None:
    if kind == "octaves":  # eighth-note octave pumping
        for s in range(0, 16, 2):
            note(s * step, 2 * step - 10, base + (12 if s % 4 == 2 else 0), 92)
    elif kind == "syncopated":
        for s, interval in ((0, 0), (3, 0), (6, 7), (10, 0), (12, chord[1 % len(chord)])):
            note(s * step, 2 * step, base + interval, 100)
    else:  # pedal: one held root per bar
        note(0, 16 * step - 20, base, 90)


def _play_comp(note, kind: str, step: int, base: int, chord: tuple[int, ...]) -> None:
    if kind == "strum":  # every eighth, down-up accents
        for s in range(0, 16, 2):
            for k, tone in enumerate(chord):
                note(s * step + k * 8, 2 * step, base + tone, 84 if s % 4 == 0 else 66)
    elif kind == "offbeat":  # the "and" of every beat
        for s in range(2, 16, 4):
            for tone in chord:
                note(s * step, step, base + tone, 86)
    else:  # sustain: two held chords per bar
        for s in (0, 8):
            for tone in chord:
                note(s * step, 8 * step - 20, base + 12 + tone, 64)


def _play_lead(
    note, kind: str, step: int, base: int, chord: tuple[int, ...], rng: np.random.Generator
) -> None:
    scale = (0, 2, 4, 7, 9, 12, 14) if 4 in chord else (0, 3, 5, 7, 10, 12, 15)
    if kind == "riff":  # a two-beat motif, played twice
        motif = [(s, int(rng.choice(scale))) for s in (0, 2, 3, 6) if rng.random() < 0.85]
        for half in (0, 8):
            for s, degree in motif:
                note(half * step + s * step, 2 * step - 10, base + 12 + degree, 90)
    else:  # long: two held notes per bar
        for s in (0, 8):
            note(s * step, 8 * step - 30, base + 12 + int(rng.choice(scale)), 80)


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


def _fluidsynth(midi: bytes, font: Path | None) -> np.ndarray:
    """The whole MIDI file played by FluidSynth: int16 stereo (n, 2)."""
    with tempfile.TemporaryDirectory(prefix="clap-render-") as tmp:
        mid, raw = Path(tmp) / "track.mid", Path(tmp) / "track.raw"
        mid.write_bytes(midi)
        cmd = [
            fluidsynth_exe(), "-ni", "-q", "-g", "0.6", "-r", str(SR), "-T", "raw",
            "-O", "s16", "-E", "little", "-F", str(raw), str(font or soundfont()), str(mid),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0 or not raw.exists():
            raise RenderError(f"fluidsynth failed (exit {done.returncode}): {done.stderr[-500:]}")
        return np.frombuffer(raw.read_bytes(), dtype="<i2").reshape(-1, 2)


def _window(pcm: np.ndarray, start: int, n: int) -> np.ndarray:
    audio = np.zeros((n, 2), np.float32)
    part = pcm[start : start + n]
    audio[: len(part)] = part / 32768.0
    return audio


def render_midi(midi: bytes, seconds: float, font: Path | None = None) -> np.ndarray:
    """``seconds`` of the MIDI file played by FluidSynth: float32 stereo (n, 2)."""
    return _window(_fluidsynth(midi, font), 0, round(seconds * SR))


def _finish(audio: np.ndarray, params: AudioParams) -> np.ndarray:
    """The tone tags applied as the synthesiser applies them; int16 PCM at a fixed peak."""
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


def render_track(
    params: AudioParams,
    seconds: float = CLIP_SECONDS,
    scheme: Scheme | None = None,
    font: Path | None = None,
) -> np.ndarray:
    """The track as int16 PCM (n, 2), tone tags applied as the synthesiser applies them."""
    midi, _ = arrangement(params, seconds, scheme)
    return _finish(render_midi(midi, seconds, font), params)


BATCH_BPM = 120.0  # the tempo of a batch's MIDI file: one tick = 1/960 s
_RESET = ((121, 0), (7, 100), (10, 64), (91, 40), (93, 0))  # FluidSynth's defaults


def render_batch(
    tracks: Sequence[tuple[AudioParams, Scheme]],
    seconds: float,
    font: Path | None = None,
    gap_s: float = 1.5,
) -> list[np.ndarray]:
    """Many tracks in one FluidSynth run (the soundfont loads once): each as ``render_track``
    makes it, up to the channels' reverb state. Segments of ``seconds + gap_s`` with every
    channel reset at the start and silenced before the gap."""
    if not tracks:
        return []
    per_second = BATCH_BPM * TICKS / 60
    segment = round((seconds + gap_s) * per_second)
    events: list[tuple[int, bytes]] = []
    for k, (params, scheme) in enumerate(tracks):
        start = k * segment
        for channel in range(16):
            events += [(start, bytes((0xB0 | channel, cc, value))) for cc, value in _RESET]
            events.append((start, bytes((0xC0 | channel, 0))))
        own, bpm = arrangement_events(params, seconds, scheme)
        scale = BATCH_BPM / bpm
        end = start + round(seconds * per_second)
        for tick, message in own:
            at = start + round(tick * scale)
            if at < end or message[0] & 0xF0 == 0x80:
                events.append((min(at, end), message))
        for channel in range(16):
            events += [(end, bytes((0xB0 | channel, cc, 0))) for cc in (123, 120)]
    events.append((len(tracks) * segment - 1, bytes((0xB0, 121, 0))))  # the last gap plays out
    pcm = _fluidsynth(midi_file(events, BATCH_BPM), font)
    n = round(seconds * SR)
    return [
        _finish(_window(pcm, round(k * (seconds + gap_s) * SR), n), params)
        for k, (params, _) in enumerate(tracks)
    ]
