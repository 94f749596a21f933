"""FMA's audio layout: one definition of a track's folder, path and file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from clap_pipeline.dataset import audio_name_id, audio_path, folder_of
from clap_pipeline.selection import stray_audio_files


@pytest.mark.parametrize("track_id", [0, 2, 999, 1000, 155_320, 999_999])
def test_folder_path_and_name_agree(track_id: int) -> None:
    path = audio_path("/fma", track_id)
    assert path.parent.name == folder_of(track_id)
    assert path == Path("/fma") / folder_of(track_id) / f"{track_id:06d}.mp3"
    assert audio_name_id(folder_of(track_id), path.name) == track_id


@pytest.mark.parametrize("track_id", [-1, 1_000_000, 1_234_567])
def test_ids_outside_the_layout_are_refused_by_both(track_id: int) -> None:
    for function in (folder_of, lambda tid: audio_path("/fma", tid)):
        with pytest.raises(ValueError, match=f"track_id {track_id} is outside"):
            function(track_id)


@pytest.mark.parametrize(
    "name",
    ["foo.mp3", "42.mp3", "000477.MP3", "001000.mp3", "0000477.mp3", ".000477.mp3", "000477.mp3~"],
)
def test_names_outside_the_layout_are_no_clip(name: str) -> None:
    assert audio_name_id("000", name) is None


def test_stray_files_are_listed_per_folder(tmp_path: Path) -> None:
    for name in ("000/000002.mp3", "000/foo.mp3", "000/000477.MP3", "001/001000.mp3"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "001" / "sub").mkdir()
    assert stray_audio_files(tmp_path, ["000", "001", "002"]) == {
        "000": ["000477.MP3", "foo.mp3"],
        "001": ["sub"],
    }
