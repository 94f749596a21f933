"""`clap-pipeline demo-data`: FMA format, defects, determinism, audio that follows metadata."""

from __future__ import annotations

import ast
import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from clap_pipeline.cli import main
from clap_pipeline.dataset import audio_path
from clap_pipeline.demo import collection as demo
from clap_pipeline.demo import encode
from clap_pipeline.demo.collection import MARKER_NAME, write_demo_dataset
from clap_pipeline.demo.encode import DemoDataError
from clap_pipeline.demo.plan import (
    STYLE_OF_TOP,
    TrackPlan,
    audio_params,
    plan_dataset,
    tracks_csv_text,
)
from clap_pipeline.demo.synth import (
    CLIP_SECONDS,
    STYLES,
    TEMPO_TAGS,
    TONE_TAGS,
    AudioParams,
    render_clip,
)
from clap_pipeline.metadata.captions import read_captions
from clap_pipeline.metadata.fma import load_metadata
from clap_pipeline_tests.demo_fixtures import (
    FMA_COLUMN_TUPLES,
    FMA_TOP_LEVEL,
    LIST_COLUMNS,
    SR,
    band_fraction,
    decode,
    frame_header,
    genre_features,
    id3_tags,
    onset_rate,
    onset_strength,
    spectral_centroid,
    spectrogram_similarity,
)

N_TRACKS, SEED = 16, 7
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@dataclass(frozen=True)
class Generated:
    root: Path
    summary: demo.DemoSummary
    frame: pd.DataFrame  # read the way FMA's reference loader reads it

    @property
    def audio_dir(self) -> Path:
        return self.root / "fma_audio"

    def path(self, track_id: int) -> Path:
        return audio_path(self.audio_dir, track_id)


def _read_tracks(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0, header=[0, 1])
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(ast.literal_eval)
    return frame


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    root = tmp_path_factory.mktemp("demo")
    messages: list[str] = []
    summary = write_demo_dataset(root, n_tracks=N_TRACKS, seed=SEED, log=messages.append)
    assert messages and "clips/s" in messages[-1]  # progress with a rate
    return Generated(root, summary, _read_tracks(root / "fma_metadata" / "tracks.csv"))


def _playable(gen: Generated) -> list[int]:
    return [int(t) for t in gen.frame.index if t not in gen.summary.defects.values()]


# --------------------------------------------------------------------------- metadata


def test_tracks_csv_has_fma_header_and_columns(generated: Generated) -> None:
    path = generated.root / "fma_metadata" / "tracks.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    groups, fields, index_row = rows[:3]
    assert groups[0] == "" and fields[0] == ""
    assert list(zip(groups[1:], fields[1:], strict=True)) == FMA_COLUMN_TUPLES
    assert index_row == ["track_id"] + [""] * 52
    assert len(rows) == 3 + N_TRACKS  # quoted newlines do not split records
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # no BOM; CRLF only in text

    frame = generated.frame
    assert isinstance(frame.columns, pd.MultiIndex)
    assert list(frame.columns) == FMA_COLUMN_TUPLES
    assert frame.index.name == "track_id" and frame.shape == (N_TRACKS, 52)
    ids = frame.index.to_list()
    assert ids == sorted(ids) and ids[0] == 2
    assert len({i // 1000 for i in ids}) >= 2  # at least folders 000 and 001
    assert max(np.diff(ids)) > 1  # sparse, like FMA's


def test_values_have_fma_quirks(generated: Generated) -> None:
    f = generated.frame
    for column in LIST_COLUMNS:
        assert all(isinstance(v, list) for v in f[column]), column
    assert all(isinstance(g, int) for gs in f[("track", "genres")] for g in gs)
    # Tags include descriptive words, an entry with both quote characters, artist names.
    all_tags = [t for ts in f[("track", "tags")] for t in ts]
    assert {"slow", "upbeat", "fast"} & set(all_tags)
    assert any("'" in t and '"' in t for t in all_tags)
    assert any(ts == [] for ts in f[("album", "tags")])
    for name, tags in zip(f[("artist", "name")], f[("artist", "tags")], strict=True):
        assert name.lower() in tags
    # Gaps: -1 integers, empty genre_top, a track without title, a missing license.
    assert (f[("album", "id")] == -1).any() or (f[("track", "bit_rate")] == -1).any()
    assert f[("track", "genre_top")].isna().any() and f[("track", "genre_top")].notna().any()
    assert f[("track", "title")].isna().sum() >= 1
    assert f[("track", "license")].isna().any()
    assert (f[("track", "duration")] == 18_350).any()
    # Free text with HTML, quotes, commas and newlines; unicode names.
    bios = " ".join(f[("artist", "bio")].dropna())
    assert "<p>" in bios and '"' in bios and "," in bios and "\n" in bios
    assert f[("artist", "members")].dropna().str.contains("\n").any()
    assert f[("album", "information")].dropna().str.contains("\r\n").any()
    text = " ".join(f[("track", "title")].dropna()) + " ".join(f[("artist", "name")])
    assert any(ord(ch) > 127 for ch in text)
    for column in [
        ("track", "date_created"),
        ("album", "date_created"),
        ("artist", "date_created"),
    ]:
        assert all(DATE_RE.match(v) for v in f[column].dropna()), column
    assert pd.to_datetime(f[("track", "date_created")]).notna().all()
    assert set(f[("set", "split")]) == {"training", "validation", "test"}
    assert (f[("set", "split")] == "training").mean() >= 0.6
    assert set(f[("set", "subset")]) <= {"small", "medium", "large"}
    # Albums: album.tracks counts the album's tracks, numbered 1..n.
    for album_id, tracks in f[f[("album", "id")] != -1].groupby(("album", "id")):
        assert (tracks[("album", "tracks")] == len(tracks)).all(), album_id
        assert sorted(tracks[("track", "number")]) == list(range(1, len(tracks) + 1))
        assert tracks[("album", "title")].nunique() == 1


def test_genres_are_consistent_with_genres_csv(generated: Generated) -> None:
    genres = pd.read_csv(generated.root / "fma_metadata" / "genres.csv")
    assert list(genres.columns) == ["genre_id", "#tracks", "parent", "title", "top_level"]
    roots = genres[genres["parent"] == 0]
    assert dict(zip(roots["genre_id"], roots["title"], strict=True)) == FMA_TOP_LEVEL
    assert len(genres) > len(roots)  # some sub-genres too
    by_id = genres.set_index("genre_id")
    f = generated.frame
    for gs, gs_all, top in zip(
        f[("track", "genres")], f[("track", "genres_all")], f[("track", "genre_top")], strict=True
    ):
        assert set(gs) <= set(gs_all) <= set(by_id.index)
        tops = {by_id.loc[g, "top_level"] for g in gs}
        assert tops <= set(gs_all)
        assert (top == by_id.loc[tops.pop(), "title"]) if len(tops) == 1 else pd.isna(top)
    counts = pd.Series([g for gs in f[("track", "genres_all")] for g in gs]).value_counts()
    assert (by_id["#tracks"] == counts.reindex(by_id.index, fill_value=0)).all()


def test_captions_say_what_each_playable_clip_plays(generated: Generated) -> None:
    path = generated.root / "fma_metadata" / "captions.csv"
    captions = read_captions(path, known_ids=_playable(generated))
    assert not captions.bad and set(captions.by_track) == set(_playable(generated))
    assert all(1 <= len(texts) <= 3 for texts in captions.by_track.values())
    words = set(TEMPO_TAGS + TONE_TAGS)
    for track_id, texts in captions.by_track.items():
        tags = {str(t).lower() for t in generated.frame.loc[track_id, ("track", "tags")]}
        for text in texts:
            said = {w for w in re.findall(r"[a-z-]+", text.lower()) if w in words}
            assert said <= tags, (track_id, text, tags)  # no tempo or tone the clip lacks


def test_project_loader_reads_every_cell(generated: Generated, tmp_path: Path) -> None:
    meta = generated.root / "fma_metadata"
    with duckdb.connect(str(tmp_path / "clap.duckdb")) as con:
        summary = load_metadata(con, meta / "tracks.csv", meta / "genres.csv")
        tags = con.execute("SELECT track_tags FROM tracks ORDER BY track_id").fetchall()
    assert summary.tracks == N_TRACKS and summary.bad_cells == ()
    assert [row[0] for row in tags] == generated.frame[("track", "tags")].to_list()


# --------------------------------------------------------------------------- audio files


def test_clips_are_fma_style_mp3s(generated: Generated, ffmpeg: str) -> None:
    playable = _playable(generated)
    kinds = set()
    for track_id in playable:
        path = generated.path(track_id)
        data = path.read_bytes()
        assert data[:3] == b"ID3" and data[3] in (3, 4)  # ID3v2.3 / 2.4
        version, layer, kbps = frame_header(data)
        assert (version, layer) == (3, 1)  # MPEG-1 Layer III
        bit_rate = generated.frame.loc[track_id, ("track", "bit_rate")]
        if b"Xing" in data[:4096]:  # LAME writes "Xing" for VBR, "Info" for CBR
            kinds.add("vbr")
            assert bit_rate == -1
        else:
            kinds.add(kbps)
            assert b"Info" in data[:4096] and bit_rate == kbps * 1000
        pcm = decode(ffmpeg, path)
        assert abs(len(pcm) / SR - CLIP_SECONDS) < 0.05, track_id  # 44.1 kHz, CLIP_SECONDS long
        assert np.abs(pcm[: 5 * SR]).max() > 3000  # not silent in the window the pipeline reads
        assert not np.array_equal(pcm[:, 0], pcm[:, 1])  # really stereo
    assert "vbr" in kinds and len(kinds - {"vbr"}) >= 2  # mixed CBR bitrates and VBR
    assert {int(p.name) for p in generated.audio_dir.iterdir() if p.is_dir()} >= {0, 1}


def test_id3_title_and_artist_match_tracks_csv(generated: Generated, ffmpeg: str) -> None:
    f = generated.frame
    for track_id in _playable(generated):
        tags = id3_tags(ffmpeg, generated.path(track_id))
        assert tags["artist"] == f.loc[track_id, ("artist", "name")]
        title = f.loc[track_id, ("track", "title")]
        if pd.isna(title):
            assert "title" not in tags
        else:
            assert tags["title"] == title


def test_defects_are_present_and_reported(generated: Generated, ffmpeg: str) -> None:
    defects = generated.summary.defects
    assert set(defects) == {"empty_clip", "short_clip", "truncated_file", "missing_file"}
    assert set(defects.values()) <= set(generated.frame.index)  # all listed in tracks.csv
    assert all(f"{tid:06d}" in str(generated.summary) for tid in defects.values())

    assert not generated.path(defects["missing_file"]).exists()

    empty = generated.path(defects["empty_clip"])
    assert empty.read_bytes()[:3] == b"ID3"  # a real encoder output, holding no audio
    assert len(decode(ffmpeg, empty)) == 0

    short = decode(ffmpeg, generated.path(defects["short_clip"]))
    assert abs(len(short) / SR - 0.5) < 0.03

    truncated = generated.path(defects["truncated_file"])
    frames = encode.mp3_frames(truncated.read_bytes())
    offset, length = frames[-1]
    assert offset < truncated.stat().st_size < offset + length  # cut inside a frame
    seconds = len(decode(ffmpeg, truncated)) / SR
    assert 5.0 < seconds < CLIP_SECONDS - 1.0
    assert generated.summary.n_clips == N_TRACKS - 1


def test_audio_is_the_synthesis_of_its_metadata(generated: Generated, ffmpeg: str) -> None:
    """The decoded first 5 s equal what the generator makes from (genres, tags) in tracks.csv."""
    f = generated.frame
    for track_id in _playable(generated):
        params = audio_params(
            track_id, f.loc[track_id, ("track", "genres")], f.loc[track_id, ("track", "tags")], SEED
        )
        expected = render_clip(params, 5.0)
        decoded = decode(ffmpeg, generated.path(track_id), 5.0)
        assert decoded.shape == expected.shape
        for channel in range(2):  # same waveform, up to MP3's losses (aligned: no offset)
            r = np.corrcoef(decoded[:, channel].astype(float), expected[:, channel].astype(float))
            assert r[0, 1] > 0.8, track_id
        assert spectrogram_similarity(decoded, expected) > 0.95, track_id
        # Control: the same tags rendered as the next genre do not match.
        other = AudioParams(
            STYLES[(STYLES.index(params.style) + 1) % len(STYLES)],
            params.tempo,
            params.register,
            params.tone,
            SEED,
            track_id,
        )
        assert spectrogram_similarity(decoded, render_clip(other, 5.0)) < 0.9, track_id


# --------------------------------------------------------------------------- synthesis


def _render(style: str, tid: int, **tags: str | None) -> np.ndarray:
    return render_clip(AudioParams(style, seed=0, track_id=tid, **tags), 5.0)


def test_every_style_has_a_top_level_genre() -> None:
    assert sorted(STYLE_OF_TOP.values()) == sorted(STYLES)
    assert all(FMA_TOP_LEVEL[g] for g in STYLE_OF_TOP)


def test_genre_is_recognisable_from_the_first_five_seconds() -> None:
    """1-nearest-neighbour on timbre/rhythm features of unseen tracks, all tags varied."""
    rng = np.random.default_rng(0)

    def sample(style: str, tid: int) -> np.ndarray:
        tempo, register, tone = (
            rng.choice([None, "slow", "upbeat", "fast"]),
            rng.choice([None, "low", "high"]),
            rng.choice([None, *TONE_TAGS]),
        )
        return genre_features(_render(style, tid, tempo=tempo, register=register, tone=tone))

    train = [(s, sample(s, 100 + i)) for s in STYLES for i in range(5)]
    test = [(s, sample(s, 200 + i)) for s in STYLES for i in range(3)]
    x = np.stack([feat for _s, feat in train])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    hits = [
        train[int(np.argmin((((feat - mean) / std - z) ** 2).sum(axis=1)))][0] == style
        for style, feat in test
    ]
    assert np.mean(hits) >= 0.75  # chance: 1/8


def test_genres_differ_in_brightness_and_rhythm() -> None:
    centroid = {s: np.mean([spectral_centroid(_render(s, t)) for t in (1, 2)]) for s in STYLES}
    # Soft strings vs distorted guitars, bright chords and synths.
    assert centroid["classical"] * 2 < min(centroid[s] for s in ("rock", "pop", "electronic"))
    # Sub bass and kicks: Hip-Hop's energy sits far below everyone else's.
    assert centroid["hiphop"] * 2 < min(c for s, c in centroid.items() if s != "hiphop")
    onsets = {s: np.mean([onset_strength(_render(s, t)) for t in (1, 2)]) for s in STYLES}
    assert onsets["electronic"] > 2 * onsets["classical"]


def test_tags_set_tempo_register_and_tone() -> None:
    for style in ("rock", "electronic", "jazz", "pop"):
        fast = onset_rate(_render(style, 3, tempo="fast"))
        slow = onset_rate(_render(style, 3, tempo="slow"))
        assert fast > 1.6 * slow, style
    for style in ("classical", "folk"):
        high = spectral_centroid(_render(style, 4, register="high"), max_hz=5000)
        low = spectral_centroid(_render(style, 4, register="low"), max_hz=5000)
        assert high > 1.6 * low, style
    for style in ("rock", "pop", "jazz"):
        c = {tone: spectral_centroid(_render(style, 5, tone=tone)) for tone in (None, *TONE_TAGS)}
        assert c["bright"] > 1.15 * c[None] > 1.15 * 1.15 * c["dark"], style
        assert c["warm"] < c[None], style
        lofi, plain = (band_fraction(_render(style, 5, tone=t), 20, 150) for t in ("lo-fi", None))
        assert lofi < plain / 4, style


# --------------------------------------------------------------------------- determinism, safety


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(generated: Generated, tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, n_tracks=N_TRACKS, seed=SEED, log=None)
    assert _digests(tmp_path) == _digests(generated.root)
    other = tracks_csv_text(plan_dataset(N_TRACKS, SEED + 1))
    assert other != (tmp_path / "fma_metadata" / "tracks.csv").read_text(encoding="utf-8")


def test_cli_writes_and_regenerates_over_its_own_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert main(["demo-data", "--tracks", "8", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "8 tracks" in printed.out and "missing_file" in printed.out and " s " in printed.out
    # The pipeline's configured folders are elsewhere: the command says how to point at it.
    assert f"CLAP_DATA_DIR={out}" in printed.err
    first = (out / "fma_metadata" / "tracks.csv").read_bytes()

    summary = write_demo_dataset(out, n_tracks=8, seed=2, log=None)
    assert (out / "fma_metadata" / "tracks.csv").read_bytes() != first
    assert summary.n_tracks == 8
    assert sorted(p.name for p in out.iterdir()) == ["fma_audio", "fma_metadata"]  # no temp left


def test_refuses_to_replace_a_dataset_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = tmp_path / "fma_metadata"
    meta.mkdir()
    real = meta / "tracks.csv"
    real.write_text("real FMA metadata\n", encoding="utf-8")
    with pytest.raises(DemoDataError, match=re.escape(str(real))):
        write_demo_dataset(tmp_path, n_tracks=8, log=None)
    assert main(["demo-data", "--tracks", "8", "--out", str(tmp_path)]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert real.read_text(encoding="utf-8") == "real FMA metadata\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fma_metadata"]

    # A demo marker no longer matching tracks.csv (the file was replaced) is refused too.
    (meta / MARKER_NAME).write_text(demo._marker(0, 8, "0" * 64), encoding="utf-8")
    with pytest.raises(DemoDataError, match="not written by"):
        demo.check_replaceable(tmp_path)

    audio_only = tmp_path / "other"
    (audio_only / "fma_audio" / "000").mkdir(parents=True)
    with pytest.raises(DemoDataError, match="fma_audio"):
        demo.check_replaceable(audio_only)


def test_failed_run_leaves_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    write_demo_dataset(out, n_tracks=8, seed=3, log=None)
    before = _digests(out)
    calls = 0
    real_write_clip = encode.write_clip

    def failing_write_clip(plan: TrackPlan, audio_root: Path, **kwargs: float) -> float:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise DemoDataError("simulated encoder crash")
        return real_write_clip(plan, audio_root, **kwargs)

    monkeypatch.setattr(encode, "write_clip", failing_write_clip)
    with pytest.raises(DemoDataError, match="simulated"):
        write_demo_dataset(out, n_tracks=8, seed=4, log=None)
    assert _digests(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["fma_audio", "fma_metadata"]


@pytest.mark.parametrize("n_tracks", [0, 7])
def test_too_few_tracks_is_a_clear_error(tmp_path: Path, n_tracks: int) -> None:
    with pytest.raises(ValueError, match="--tracks must be between 8"):
        write_demo_dataset(tmp_path / "out", n_tracks=n_tracks, log=None)
    assert not (tmp_path / "out").exists()
