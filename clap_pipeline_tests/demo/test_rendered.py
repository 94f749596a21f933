"""The rendered-instrument demo collection: GM arrangements from tags, played by FluidSynth.

The MIDI tests run anywhere. The audio tests need Debian's ``fluidsynth`` and
``fluid-soundfont-gm`` (`.ci/run` installs them); without them they are skipped and say so.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clap_pipeline.demo.collection import (
    MARKER_NAME,
    add_demo_tracks,
    write_demo_dataset,
)
from clap_pipeline.demo.plan import plan_dataset
from clap_pipeline.demo.rendered import (
    BAND,
    DRUM_CHANNEL,
    INSTRUMENT_WORDS,
    INSTRUMENTS,
    SOUNDFONT_PATHS,
    TICKS,
    arrangement,
    render_batch,
    render_track,
)
from clap_pipeline.demo.schemes import PRETRAIN_SCHEMES, PRETRAIN_SOUNDFONTS
from clap_pipeline.demo.synth import SR, STYLES, AudioParams
from clap_pipeline.metadata.captions import read_captions

HAVE_FLUIDSYNTH = shutil.which("fluidsynth") is not None and any(
    p.is_file() for p in SOUNDFONT_PATHS
)
needs_fluidsynth = pytest.mark.skipif(
    not HAVE_FLUIDSYNTH,
    reason="no fluidsynth/GM soundfont: `apt-get install -y fluidsynth fluid-soundfont-gm` "
    "(as .ci/run does)",
)


def parse_midi(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(ticks per quarter, [(absolute tick, message)]) of a format-0 file."""
    assert data[:4] == b"MThd"
    _, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    assert (fmt, ntracks) == (0, 1)
    assert data[14:18] == b"MTrk"
    (length,) = struct.unpack(">I", data[18:22])
    body = data[22:]
    assert len(body) == length
    events, tick, i = [], 0, 0
    while i < len(body):
        delta = 0
        while True:
            byte = body[i]
            i += 1
            delta = (delta << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        tick += delta
        status = body[i]
        if status == 0xFF:
            size = body[i + 2]
            events.append((tick, body[i : i + 3 + size]))
            i += 3 + size
        elif status & 0xF0 == 0xC0:
            events.append((tick, body[i : i + 2]))
            i += 2
        else:
            events.append((tick, body[i : i + 3]))
            i += 3
    return division, events


def params(style: str, instruments: tuple[str, ...], **tags: str) -> AudioParams:
    return AudioParams(style, seed=0, track_id=7, instruments=instruments, renderer="fluidsynth",
                       **tags)  # fmt: skip


def test_the_arrangement_plays_the_tagged_instruments() -> None:
    midi, bpm = arrangement(params("jazz", ("drums", "piano", "upright bass", "saxophone")))
    division, events = parse_midi(midi)
    assert division == TICKS
    programs = {m[0] & 0x0F: m[1] for _, m in events if m[0] & 0xF0 == 0xC0}
    expected = {INSTRUMENTS[w].program for w in ("piano", "upright bass", "saxophone")}
    assert {p for ch, p in programs.items() if ch != DRUM_CHANNEL} == expected
    assert programs[DRUM_CHANNEL] == 32  # the jazz kit
    note_ons = [m for _, m in events if m[0] & 0xF0 == 0x90]
    assert {m[0] & 0x0F for m in note_ons} == {0, 1, 2, DRUM_CHANNEL}
    assert 120 < bpm < 150  # jazz's own tempo when no tempo tag says otherwise
    # Every note ends: as many note-offs as note-ons, none before its note-on.
    offs = [m for _, m in events if m[0] & 0xF0 == 0x80]
    assert len(offs) == len(note_ons)


def test_tags_set_tempo_register_and_drums() -> None:
    band = ("piano", "bass")
    _, slow = arrangement(params("pop", band, tempo="slow"))
    _, fast = arrangement(params("pop", band, tempo="fast"))
    assert slow < 80 < 160 < fast

    def pitches(p: AudioParams) -> list[int]:
        _, events = parse_midi(arrangement(p)[0])
        return [m[1] for _, m in events if m[0] & 0xF0 == 0x90 and m[0] & 0x0F != DRUM_CHANNEL]

    low, high = (
        pitches(params("pop", band, register="low")),
        pitches(params("pop", band, register="high")),
    )
    assert np.mean(high) - np.mean(low) == pytest.approx(24, abs=1)
    _, events = parse_midi(arrangement(params("pop", band))[0])
    assert all(m[0] & 0x0F != DRUM_CHANNEL for _, m in events if m[0] & 0xF0 == 0x90)


def test_the_plan_names_the_band_in_the_tags_and_the_synth_plan_is_unchanged() -> None:
    rendered = plan_dataset(40, seed=3, renderer="fluidsynth")
    synthesised = plan_dataset(40, seed=3)
    for r, s in zip(rendered, synthesised, strict=True):
        tags = r.row[("track", "tags")]
        assert r.params.instruments == tuple(t for t in tags if t in INSTRUMENT_WORDS)
        assert 2 <= len(r.params.instruments) <= 4
        # The same collection otherwise: only the instruments were added to the tags.
        assert [t for t in tags if t not in INSTRUMENT_WORDS] == s.row[("track", "tags")]
        assert replace(r.params, instruments=(), renderer="synth") == s.params
    assert {p.params.style for p in rendered} == set(STYLES)


@needs_fluidsynth
def test_rendered_audio_follows_the_instruments() -> None:
    def band_energy(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
        spectrum = np.abs(np.fft.rfft(audio.astype(np.float64).mean(axis=1))) ** 2
        freqs = np.fft.rfftfreq(len(audio), 1 / SR)
        return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum() / spectrum.sum())

    with_drums = render_track(params("rock", ("drums", "electric guitar", "bass")), 4.0)
    without = render_track(params("rock", ("electric guitar", "bass")), 4.0)
    assert with_drums.shape == without.shape == (4 * SR, 2)
    assert with_drums.dtype == np.int16 and np.abs(with_drums).max() > 20_000
    # Cymbals and hats put energy above 6 kHz that guitar and bass alone do not.
    assert band_energy(with_drums, 6000, 16000) > 3 * band_energy(without, 6000, 16000)
    # Deterministic: the same track renders to the same samples.
    again = render_track(params("rock", ("drums", "electric guitar", "bass")), 4.0)
    assert np.array_equal(with_drums, again)


@needs_fluidsynth
def test_demo_data_writes_a_rendered_collection(tmp_path: Path) -> None:
    summary = write_demo_dataset(tmp_path, n_tracks=12, seed=1, renderer="fluidsynth", log=None)
    marker = json.loads((tmp_path / "fma_metadata" / MARKER_NAME).read_text())
    assert marker["renderer"] == "fluidsynth"
    assert summary.n_tracks == 12
    clips = sorted((tmp_path / "fma_audio").rglob("*.mp3"))
    assert len(clips) == summary.n_clips == 11  # one listed track has no file
    added = add_demo_tracks(tmp_path, 2, log=None)
    marker = json.loads((tmp_path / "fma_metadata" / MARKER_NAME).read_text())
    assert marker["renderer"] == "fluidsynth" and len(added.track_ids) == 2
    tracks = pd.read_csv(summary.tracks_csv, index_col=0, header=[0, 1], skiprows=[2])
    for track_id in added.track_ids:
        tags = ast.literal_eval(tracks.loc[track_id, ("track", "tags")])
        assert 2 <= len([t for t in tags if t in INSTRUMENT_WORDS]) <= 4
    # Captions of every playable track, the added ones too; they name only instruments it plays.
    captions = read_captions(tmp_path / "fma_metadata" / "captions.csv", tracks.index.tolist())
    assert not captions.bad and set(added.track_ids) <= set(captions.by_track)
    assert len(captions.by_track) == summary.n_tracks - len(summary.defects) + 2  # no defects
    for track_id, texts in captions.by_track.items():
        tags = ast.literal_eval(tracks.loc[track_id, ("track", "tags")])
        for text in texts:
            named = {i for i in INSTRUMENT_WORDS if re.search(rf"\b{i}\b", text.lower())}
            assert named <= set(tags) | {"bass"}, (text, tags)  # "bass" is in "upright bass"


def _log_spectrogram(pcm: np.ndarray) -> np.ndarray:
    mono = pcm.astype(np.float64).mean(axis=1)
    frames = mono[: len(mono) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    return np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-3)


def test_schemes_arrange_the_same_track_their_own_way() -> None:
    params = AudioParams("rock", None, None, None, 0, 3, ("drums", "bass", "electric guitar"))
    notes = {}
    for scheme in PRETRAIN_SCHEMES.values():
        _, events = parse_midi(arrangement(params, 4.0, scheme)[0])
        notes[scheme.name] = [(t, m[1]) for t, m in events if m[0] & 0xF0 == 0x90]
        mixed = [m for _, m in events if m[0] & 0xF0 == 0xB0]
        assert bool(mixed) == scheme.mix  # volume / pan / reverb sends only when mixed
    assert len({tuple(n) for n in notes.values()}) == len(PRETRAIN_SCHEMES)
    assert arrangement(params, 4.0)[0] == arrangement(params, 4.0, BAND)[0]  # the demo's own


@needs_fluidsynth
def test_one_fluidsynth_run_renders_many_tracks_as_one_by_one() -> None:
    tracks = [
        (AudioParams(style, None, None, None, 0, k, (band,), "fluidsynth"), scheme)
        for k, (style, band, scheme) in enumerate(
            (("jazz", "piano", BAND), ("folk", "banjo", PRETRAIN_SCHEMES["studio"]))
        )
    ]
    batch = render_batch(tracks, 3.0)
    for (params, scheme), pcm in zip(tracks, batch, strict=True):
        alone = render_track(params, 3.0, scheme)
        assert pcm.shape == alone.shape
        same = np.corrcoef(_log_spectrogram(pcm).ravel(), _log_spectrogram(alone).ravel())[0, 1]
        assert same > 0.9, same  # the same music (tick rounding shifts notes by < 1 ms)
    # Another soundfont is another sound (.ci/run installs MuseScore's next to FluidR3).
    changed = render_track(tracks[0][0], 3.0, BAND, PRETRAIN_SOUNDFONTS["musescore"])
    diff = np.corrcoef(_log_spectrogram(changed).ravel(), _log_spectrogram(batch[0]).ravel())
    assert diff[0, 1] < 0.97, diff[0, 1]
