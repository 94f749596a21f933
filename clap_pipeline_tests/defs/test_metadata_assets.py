"""Assets `tracks` and `prompts` and their checks, run by Dagster on an ephemeral instance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from clap_pipeline.dataset import PROMPTS_SCHEMA, audio_path, read_prompts, write_prompts
from clap_pipeline.defs.metadata import (
    prompts,
    prompts_match_contract,
    prompts_no_placeholder_text,
    prompts_tracks_exist,
    tracks,
    tracks_track_ids_valid,
)
from clap_pipeline.defs.partitions import audio_folder_partitions
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.demo.fma_synthetic import quirky_tracks, write_metadata
from clap_pipeline.metadata.prompts import content_hash

CHECKS = [
    tracks_track_ids_valid,
    prompts_tracks_exist,
    prompts_no_placeholder_text,
    prompts_match_contract,
]
DATA_VERSION = "dagster/data_version"
AUDIO_IDS = [2, 5, 26, 1000, 1001, 155320]


def _resources(root: Path, max_tracks: int = 4) -> dict:
    return {
        "clap_settings": ClapSettings(data_dir=str(root), max_tracks=max_tracks),
    }


def _data(root: Path, frame: pd.DataFrame | None = None) -> Path:
    meta = write_metadata(root / "fma_metadata", frame)
    for tid in AUDIO_IDS:  # selection only needs the files to exist
        path = audio_path(root / "fma_audio", tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3")
    return meta


def _materialization(result, node: str):
    (mat,) = result.asset_materializations_for_node(node)
    return mat


def test_definitions() -> None:
    for assets_def in (tracks, prompts):
        key = assets_def.key
        assert assets_def.group_names_by_key[key] == "metadata"
    assert AssetKey("tracks") in prompts.asset_deps[AssetKey("prompts")]
    assert tracks.required_resource_keys - {"io_manager"} == {"clap_settings"}
    check_names = {
        (spec.asset_key.to_user_string(), spec.name)
        for check in CHECKS
        for spec in check.check_specs
    }
    assert check_names == {
        ("tracks", "tracks_track_ids_valid"),
        ("prompts", "prompts_tracks_exist"),
        ("prompts", "prompts_no_placeholder_text"),
        ("prompts", "prompts_match_contract"),
    }


def test_materialize_tracks_and_prompts(tmp_path: Path) -> None:
    meta = _data(tmp_path)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [tracks, prompts, *CHECKS], resources=_resources(tmp_path), instance=instance
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {spec.name for c in CHECKS for spec in c.check_specs}
    assert all(e.passed for e in checks.values()), checks

    mat = _materialization(result, "tracks")
    meta_values = {k: v.value for k, v in mat.metadata.items()}
    assert meta_values["dagster/row_count"] == 13
    schema = meta_values["dagster/column_schema"]
    assert [c.name for c in schema.columns][:3] == [
        "track_id",
        "album_comments",
        "album_date_created",
    ]
    assert len(schema.columns) == 54
    assert dict((c.name, c.type) for c in schema.columns)["track_tags"] == "VARCHAR[]"
    assert meta_values["null_counts"] == {
        "track_title": 1,
        "artist_name": 0,
        "track_genre_top": 2,
    }
    assert "| Hip-Hop | 3 | 23.1 % |" in meta_values["genre_top_distribution"]
    assert "| (empty) | 2 |" in meta_values["genre_top_distribution"]
    assert meta_values["unparsable_cells"] == 0
    assert meta_values["added_audio_folder_partitions"] == ["000", "001"]
    sha = hashlib.sha256((meta / "tracks.csv").read_bytes()).hexdigest()
    assert meta_values["tracks_csv_sha256"] == sha
    assert mat.tags[DATA_VERSION] == sha
    assert instance.get_dynamic_partitions(audio_folder_partitions.name) == ["000", "001"]

    table = read_prompts(tmp_path / "prompts.parquet")
    assert table.schema.remove_metadata() == PROMPTS_SCHEMA
    assert table["track_id"].to_pylist() == [2, 5, 26, 1000]  # first 4 with audio
    mat = _materialization(result, "prompts")
    assert mat.metadata["dagster/row_count"].value == 4
    assert mat.tags[DATA_VERSION] == content_hash(table)
    sample = mat.metadata["sample_prompts"].value
    assert all(p in sample for p in table["prompt"].to_pylist())
    distribution = mat.metadata["template_distribution"].value
    assert distribution.count("\n") == 6 and "reference" in distribution

    # Same input again: same version, no new partitions; a new file: a new version.
    again = materialize([tracks], resources=_resources(tmp_path), instance=instance)
    mat = _materialization(again, "tracks")
    assert mat.tags[DATA_VERSION] == sha
    assert mat.metadata["added_audio_folder_partitions"].value == []
    write_metadata(meta, quirky_tracks().drop(index=[3]))
    changed = materialize([tracks], resources=_resources(tmp_path), instance=instance)
    mat = _materialization(changed, "tracks")
    assert mat.tags[DATA_VERSION] != sha
    assert mat.metadata["dagster/row_count"].value == 12


def test_prompts_use_a_captions_table_and_report_its_bad_rows(tmp_path: Path) -> None:
    _data(tmp_path)
    captions = tmp_path / "captions.csv"
    captions.write_text(
        'track_id,caption\n2,"a dusty piano beat, slow"\n2,boom bap drums\n5,\n999,nobody\n'
    )
    resources = {
        "clap_settings": ClapSettings(
            data_dir=str(tmp_path), max_tracks=4, captions=str(captions), captions_mode="captions"
        )
    }
    result = materialize([tracks, prompts, *CHECKS], resources=resources)
    assert result.success  # bad rows are reported, never fatal
    assert all(e.passed for e in result.get_asset_check_evaluations())
    meta = {k: v.value for k, v in _materialization(result, "prompts").metadata.items()}
    assert (meta["captions_rows"], meta["captions_used"], meta["captions_bad_rows"]) == (4, 2, 2)
    assert meta["captions_mode"] == "captions" and meta["captions_tracks"] == 1
    assert "empty caption (first: track_id 5)" in meta["captions_problems"]
    assert "not a selected track (first: track_id 999)" in meta["captions_problems"]
    assert f"| - | caption | {captions} | 1 |" in meta["template_distribution"]
    rows = {r["track_id"]: r for r in read_prompts(tmp_path / "prompts.parquet").to_pylist()}
    assert rows[2]["prompt"] in ("a dusty piano beat, slow", "boom bap drums")
    assert rows[5]["template_id"] < 5  # no usable caption: the templates describe it


def test_prompt_seed_is_configurable(tmp_path: Path) -> None:
    _data(tmp_path)
    resources = _resources(tmp_path, max_tracks=100)
    materialize([tracks], resources=resources, instance=DagsterInstance.ephemeral())
    choices = []
    for seed in (0, 0, 5):
        result = materialize(
            [prompts],
            resources=resources,
            run_config={"ops": {"prompts": {"config": {"seed": seed}}}},
        )
        assert result.success
        assert _materialization(result, "prompts").metadata["seed"].value == seed
        choices.append(read_prompts(tmp_path / "prompts.parquet")["template_id"].to_pylist())
    assert len(choices[0]) == len(AUDIO_IDS)
    assert choices[0] == choices[1]
    assert choices[0] != choices[2]


def test_bad_tracks_csv_fails_and_keeps_the_previous_table(tmp_path: Path) -> None:
    meta = _data(tmp_path)
    resources = _resources(tmp_path)
    assert materialize([tracks], resources=resources).success
    frame = quirky_tracks()
    write_metadata(meta, pd.concat([frame, frame.loc[[10]]]).sort_index())
    result = materialize([tracks], resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("tracks")
    assert "duplicate track_id(s): 10" in failure.error.cause.message
    with duckdb.connect(str(tmp_path / "clap.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM tracks").fetchone() == (13,)


def test_checks_catch_bad_outputs(tmp_path: Path) -> None:
    _data(tmp_path)
    resources = _resources(tmp_path)
    assert materialize([tracks, prompts], resources=resources).success
    settings = resources["clap_settings"]
    assert prompts_tracks_exist(clap_settings=settings).passed
    assert prompts_no_placeholder_text(clap_settings=settings).passed
    assert prompts_match_contract(clap_settings=settings).passed

    path = tmp_path / "prompts.parquet"
    bad = pa.table(
        {
            "track_id": pa.array([2, 5, 999], pa.int64()),
            "prompt": pa.array(['"Food" by None.', 'A track called "" by AWOL.', "x"]),
            "template_id": pa.array([0, 1, 4], pa.int32()),
            "renderings": pa.array(
                [
                    ['"Food" by None.', None, None, None, None],
                    [None, 'A track called "" by AWOL.', "Tags: .", None, None],
                    [None, None, None, None, "y"],
                ],
                pa.list_(pa.string()),
            ),
        },
        schema=PROMPTS_SCHEMA,
    )
    write_prompts(bad, path)
    exist = prompts_tracks_exist(clap_settings=settings)
    assert not exist.passed and "999" in exist.description
    leaks = prompts_no_placeholder_text(clap_settings=settings)
    assert not leaks.passed
    assert "track 2 prompt: contains 'None'" in leaks.description
    assert 'track 5 prompt: contains empty quotes ""' in leaks.description
    assert "track 5 rendering 2: contains an empty field" in leaks.description
    assert leaks.metadata["problems"].value == 5  # prompt+rendering of 2, of 5, and "Tags: ."
    contract = prompts_match_contract(clap_settings=settings)
    assert not contract.passed and "track 999: prompt differs" in contract.description

    with duckdb.connect(str(tmp_path / "clap.duckdb")) as con:
        con.execute("CREATE OR REPLACE TABLE tracks (track_id BIGINT)")
        con.execute("INSERT INTO tracks VALUES (1), (1), (NULL)")
    ids = tracks_track_ids_valid(clap_settings=settings)
    assert not ids.passed
    assert ids.description == "1 row(s) with a NULL track_id; duplicate track_id(s): 1"
    with duckdb.connect(str(tmp_path / "clap.duckdb")) as con:
        con.execute("DELETE FROM tracks")
    assert tracks_track_ids_valid(clap_settings=settings).description == "table `tracks` is empty"


def test_prompts_without_audio_fails_clearly(tmp_path: Path) -> None:
    write_metadata(tmp_path / "fma_metadata")
    (tmp_path / "fma_audio").mkdir()
    resources = _resources(tmp_path)
    result = materialize([tracks], resources=resources)
    assert _materialization(result, "tracks").metadata["added_audio_folder_partitions"].value == []
    result = materialize([prompts], resources=resources, raise_on_error=False)
    assert not result.success
    assert "has an MP3" in result.failure_data_for_node("prompts").error.cause.message


@pytest.mark.parametrize("missing", ["tracks.csv", "genres.csv"])
def test_missing_input_file(tmp_path: Path, missing: str) -> None:
    meta = _data(tmp_path)
    (meta / missing).unlink()
    result = materialize([tracks], resources=_resources(tmp_path), raise_on_error=False)
    assert not result.success
    assert missing in result.failure_data_for_node("tracks").error.cause.message
