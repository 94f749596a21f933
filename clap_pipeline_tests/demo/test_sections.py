"""Sectioned demo tracks: two genres joined at a window boundary, and the sections table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.cli import main
from clap_pipeline.dataset import audio_path
from clap_pipeline.demo.plan import plan_dataset
from clap_pipeline.demo.sections import genre_title, second_half, sectioned_clip, split_s
from clap_pipeline.demo.synth import SR, AudioParams, render_clip
from clap_pipeline.sections import SECTIONS_NAME, Section, read_sections, sections_csv_text


def test_a_sectioned_clip_is_its_genre_then_another_split_at_a_window_boundary() -> None:
    params = AudioParams("folk", seed=3, track_id=17)
    pcm, (first, second) = sectioned_clip(params, 30.0, 17)
    assert pcm.shape == (30 * SR, 2) and pcm.dtype == np.int16
    assert (first.start_s, first.end_s, second.start_s, second.end_s) == (0.0, 15.0, 15.0, 30.0)
    assert first.genre == genre_title("folk") == "Folk" and second.genre != "Folk"
    assert second.genre == genre_title(second_half(params).style)
    # The first half is the track's own genre as the generator renders it; the second is not.
    np.testing.assert_array_equal(pcm[: 15 * SR], render_clip(params, 15.0))
    assert not np.array_equal(pcm[15 * SR :], render_clip(params, 15.0))
    again, _ = sectioned_clip(params, 30.0, 17)
    np.testing.assert_array_equal(pcm, again)  # a function of (seed, track_id)
    assert split_s(10.0) == 5.0 and split_s(12.0) == 5.0 and split_s(3.0) == 1.5


def test_sections_table_round_trips_and_bad_rows_name_the_row(tmp_path: Path) -> None:
    sections = [Section(5, 15.0, 30.0, "Rock"), Section(5, 0.0, 15.0, "Folk")]
    path = tmp_path / "sections.csv"
    path.write_text(sections_csv_text(sections), encoding="utf-8")
    assert read_sections(path) == sorted(sections, key=lambda s: s.start_s)
    path.write_text("track_id,start_s,end_s,genre\n5,10,5,Rock\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2: needs 0 <= start_s < end_s"):
        read_sections(path)
    path.write_text("track_id,start_s,end_s,genre\nx,0,5,Rock\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2"):
        read_sections(path)


def test_demo_data_sections_writes_sectioned_clips_and_the_table(tmp_path: Path) -> None:
    plain, sectioned = tmp_path / "plain", tmp_path / "sectioned"
    args = ["demo-data", "--tracks", "8", "--seed", "1", "--seconds", "10"]
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--out", str(sectioned), "--sections"]) == 0
    assert not (plain / "fma_metadata" / SECTIONS_NAME).exists()
    sections = read_sections(sectioned / "fma_metadata" / SECTIONS_NAME)
    playable = [p for p in plan_dataset(8, 1) if p.defect is None]
    assert [s.track_id for s in sections] == [p.track_id for p in playable for _ in range(2)]
    halves = zip(sections[::2], sections[1::2], strict=True)
    for plan, (first, second) in zip(playable, halves, strict=True):
        assert (first.start_s, first.end_s, second.start_s, second.end_s) == (0, 5, 5, 10)
        assert first.genre == genre_title(plan.params.style) != second.genre
        clip = audio_path(Path("fma_audio"), plan.track_id)
        assert (plain / clip).read_bytes() != (sectioned / clip).read_bytes()
