"""Captions from a table: read with bad rows counted, used beside or instead of the templates."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_pipeline.dataset import Prompts, write_prompts
from clap_pipeline.metadata.captions import MAX_CAPTION_CHARS, CaptionsError, read_captions
from clap_pipeline.metadata.prompts import (
    N_TEMPLATES,
    TrackText,
    build_prompts,
    render_all,
    template_name,
)

FOOD = TrackText(2, "Food", "AWOL", "AWOL - A Way Of Life", "Hip-Hop", ("lo-fi",))
BARE = TrackText(9, None, None, None, None, ())  # no template applies

CSV = f"""track_id,caption
2,a slow lo-fi hip-hop beat with a dusty piano
2,"boom bap drums, upright bass and a rhodes"
2,a slow lo-fi hip-hop beat with a dusty piano
9,"  solo   cello, dark and slow"
3,one,two
7,a track nobody selected
x2,not an id
5,
5,{"very long " * (MAX_CAPTION_CHARS // 10 + 1)}
"""


def write_csv(tmp_path: Path, text: str = CSV) -> Path:
    path = tmp_path / "captions.csv"
    path.write_text(text)
    return path


def test_captions_are_read_cleaned_and_bad_rows_counted_by_reason(tmp_path: Path) -> None:
    captions = read_captions(write_csv(tmp_path), known_ids=[2, 5, 9])
    assert captions.by_track == {
        2: (
            "a slow lo-fi hip-hop beat with a dusty piano",
            "boom bap drums, upright bass and a rhodes",
        ),
        9: ("solo cello, dark and slow",),
    }
    assert (captions.rows, captions.n_captions) == (9, 3)
    assert dict(captions.bad) == {
        "malformed": 1,
        "duplicate": 1,
        "unknown_track": 1,
        "bad_track_id": 1,
        "empty": 1,
        "too_long": 1,
    }
    problems = captions.problems()
    assert "1 row(s) left out: track_id is not a selected track (first: track_id 7)" in problems
    assert "1 row(s) left out: track_id is not an integer (first: track_id 'x2')" in problems
    assert any("over 400 characters (first: track_id 5)" in p for p in problems)
    assert any("two fields" in p and "line 6: '3,one,two'" in p for p in problems)
    # The same table as Parquet (integer ids) reads the same.
    parquet = tmp_path / "captions.parquet"
    pq.write_table(
        pa.table({"track_id": [2, 9, 2], "caption": ["piano trio", "cello", None]}), parquet
    )
    from_parquet = read_captions(parquet, known_ids=[2, 9])
    assert from_parquet.by_track == {2: ("piano trio",), 9: ("cello",)}
    assert dict(from_parquet.bad) == {"empty": 1}


def test_a_file_that_is_not_a_captions_table_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaptionsError, match="does not exist"):
        read_captions(tmp_path / "none.csv", [1])
    with pytest.raises(CaptionsError, match=r"lacks column\(s\) \['caption'\]"):
        read_captions(write_csv(tmp_path, "track_id,text\n1,piano\n"), [1])
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(CaptionsError, match=r"bad\.parquet is not a readable Parquet table"):
        read_captions(bad, [1])


def test_mixed_captions_join_the_templates_and_keep_the_template_prompt() -> None:
    captions = {2: ("a dusty piano beat", "boom bap drums"), 9: ("solo cello",)}
    templates_only = build_prompts([FOOD, BARE], seed=0).table.to_pylist()
    mixed = build_prompts([FOOD, BARE], seed=0, captions=captions).table.to_pylist()
    food = mixed[0]
    assert food["renderings"] == [*render_all(FOOD), "a dusty piano beat", "boom bap drums"]
    assert (food["prompt"], food["template_id"]) == (
        templates_only[0]["prompt"],
        templates_only[0]["template_id"],
    )
    # A track no template describes is no longer skipped: its caption is its prompt.
    assert len(templates_only) == 1
    assert mixed[1]["track_id"] == 9 and mixed[1]["prompt"] == "solo cello"
    assert template_name(mixed[1]["template_id"]) == "caption"


def test_captions_mode_describes_a_track_by_its_captions_alone() -> None:
    captions = {2: ("a dusty piano beat", "boom bap drums")}
    rows = build_prompts([FOOD], seed=0, captions=captions, captions_mode="captions").table
    (food,) = rows.to_pylist()
    assert food["renderings"][:N_TEMPLATES] == [None] * N_TEMPLATES
    assert food["prompt"] in captions[2]
    assert food["template_id"] >= N_TEMPLATES
    assert build_prompts([FOOD], 0, captions, "captions").template_counts()["caption"] == 1
    ignored = build_prompts([FOOD], seed=0, captions=captions, captions_mode="templates").table
    assert ignored.to_pylist() == build_prompts([FOOD], seed=0).table.to_pylist()


def test_training_draws_the_captions_per_epoch(tmp_path: Path) -> None:
    captions = {2: ("a dusty piano beat", "boom bap drums", "late night beat tape")}
    path = write_prompts(
        build_prompts([FOOD], 0, captions, "captions").table, tmp_path / "prompts.parquet"
    )
    prompts = Prompts.load(path)
    drawn = {prompts.text_for(2, seed=0, epoch=e, resample=True) for e in range(1, 30)}
    assert drawn == set(captions[2])
    mixed = Prompts.load(write_prompts(build_prompts([FOOD], 0, captions).table, path))
    drawn = {mixed.text_for(2, seed=0, epoch=e, resample=True) for e in range(1, 60)}
    assert set(captions[2]) < drawn and drawn - set(captions[2]) <= set(render_all(FOOD))
