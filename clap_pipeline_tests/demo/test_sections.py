"""Sectioned demo tracks: two genres joined at a window boundary, and the sections table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.demo.sections import genre_title, second_half, sectioned_clip, split_s
from clap_pipeline.demo.synth import SR, AudioParams, render_clip
from clap_pipeline.sections import Section, read_sections, sections_csv_text


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
