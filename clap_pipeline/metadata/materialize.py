"""The `tracks` and `prompts` assets' work: load FMA's CSVs into DuckDB, write the prompts;
each returns its materialization metadata (``reporting``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from clap_pipeline.config import Settings
from clap_pipeline.dataset import write_prompts
from clap_pipeline.metadata.captions import Captions, read_captions
from clap_pipeline.metadata.fma import load_metadata, profile_tracks
from clap_pipeline.metadata.prompts import (
    CAPTION,
    TEMPLATE_NAMES,
    TEMPLATE_PATTERNS,
    build_prompts,
    content_hash,
    read_track_texts,
    template_name,
)
from clap_pipeline.reporting import Log, Markdown, warn
from clap_pipeline.selection import selected_tracks
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.tables import markdown_table

MAX_LOGGED = 20
SAMPLE_PROMPTS = 10


def listed(items: list, limit: int = MAX_LOGGED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


@dataclass(frozen=True)
class LoadedTracks:
    summary: Any  # fma.LoadSummary
    profile: Any  # fma.TracksProfile

    def metadata(self, settings: Settings, added_partitions: list[str]) -> dict[str, object]:
        summary, profile = self.summary, self.profile
        genre_rows = [
            [genre or "(empty)", count, f"{100 * count / max(profile.rows, 1):.1f} %"]
            for genre, count in profile.genre_top_counts
        ]
        return {
            "dagster/row_count": profile.rows,
            "null_counts": profile.null_counts,
            "genre_top_distribution": Markdown(
                markdown_table(["genre_top", "tracks", "share"], genre_rows)
            ),
            "genres": summary.genres,
            "unparsable_cells": len(summary.bad_cells),
            "unparsable_cells_by_column": summary.bad_cell_counts(),
            "unparsable_cells_sample": [
                {"track_id": c.track_id, "column": c.column} for c in summary.bad_cells[:MAX_LOGGED]
            ],
            "ignored_columns": list(summary.ignored_columns),
            "tracks_csv_sha256": summary.tracks_sha256,
            "genres_csv_sha256": summary.genres_sha256,
            "added_audio_folder_partitions": list(added_partitions),
            "seconds": round(summary.seconds, 2),
            "tracks_csv": Path(settings.tracks_csv),
            "duckdb": Path(settings.duckdb_path),
        }


def load_tracks(con: duckdb.DuckDBPyConnection, settings: Settings, log: Log) -> LoadedTracks:
    """tracks.csv and genres.csv into `tracks` and `genres`; what did not parse is logged."""
    summary = load_metadata(con, settings.tracks_csv, settings.genres_csv, log=log)
    profile = profile_tracks(con)
    for cell in summary.bad_cells[:MAX_LOGGED]:
        warn(log, f"track {cell.track_id}: {cell.column} does not parse, stored as NULL")
    if len(summary.bad_cells) > MAX_LOGGED:
        warn(log, f"... {len(summary.bad_cells)} unparsable cells in all")
    if summary.ignored_columns:
        warn(log, f"ignored columns not in FMA's format: {summary.ignored_columns}")
    return LoadedTracks(summary, profile)


def experiment_captions(settings: Settings, track_ids: list[int], log: Log) -> Captions | None:
    """``CLAP_CAPTIONS`` of the selected tracks (None: no file, or mode ``templates``);
    its bad rows are logged, never fatal."""
    if settings.captions is None or settings.captions_mode == "templates":
        return None
    captions = read_captions(settings.captions, track_ids)
    log(
        f"captions: {captions.n_captions} of {captions.rows} rows of {settings.captions} "
        f"describe {len(captions.by_track)} tracks ({settings.captions_mode})"
    )
    for line in captions.problems():
        warn(log, f"captions: {line}")
    return captions


def captions_metadata(settings: Settings, captions: Captions) -> dict[str, object]:
    return {
        "captions_file": Path(settings.captions),
        "captions_mode": settings.captions_mode,
        "captions_rows": captions.rows,
        "captions_used": captions.n_captions,
        "captions_tracks": len(captions.by_track),
        "captions_bad_rows": sum(captions.bad.values()),
        "captions_problems": Markdown(
            "\n".join(f"- {line}" for line in captions.problems()) or "none"
        ),
    }


def write_experiment_prompts(
    settings: Settings, seed: int, log: Log
) -> tuple[dict[str, object], str]:
    """One prompt per selected track into prompts.parquet: (metadata, content hash)."""
    selected = selected_tracks(settings)
    if not selected:
        raise FileNotFoundError(
            f"no track of `tracks` has an MP3 under {settings.audio_dir}: nothing to prompt"
        )
    with duckdb_connection(settings.duckdb_path, read_only=True) as con:
        texts = read_track_texts(con, [t.track_id for t in selected])
    captions = experiment_captions(settings, [t.track_id for t in selected], log)
    result = build_prompts(
        texts, seed, captions.by_track if captions else None, settings.captions_mode
    )
    if result.skipped:
        warn(
            log,
            f"{len(result.skipped)} track(s) without title, artist, genre and tags got no "
            f"prompt: {listed(list(result.skipped))}",
        )
    if result.table.num_rows == 0:
        raise ValueError("no selected track has enough metadata for any prompt template")
    path = write_prompts(result.table, settings.prompts_path)
    version = content_hash(result.table)
    log(f"wrote {result.table.num_rows} prompts to {path}")
    counts = result.template_counts()
    templates = [
        [i, name, TEMPLATE_PATTERNS[i], counts[name]] for i, name in enumerate(TEMPLATE_NAMES)
    ]
    if captions:
        templates.append(["-", CAPTION, str(settings.captions), counts[CAPTION]])
    sample = [
        [r["track_id"], template_name(r["template_id"]), r["prompt"]]
        for r in result.table.slice(0, SAMPLE_PROMPTS).to_pylist()
    ]
    metadata = {
        "dagster/row_count": result.table.num_rows,
        "selected_tracks": len(selected),
        "skipped_tracks": len(result.skipped),
        "seed": seed,
        "template_distribution": Markdown(
            markdown_table(["id", "template", "pattern", "prompts"], templates)
        ),
        "sample_prompts": Markdown(markdown_table(["track_id", "template", "prompt"], sample)),
        **(captions_metadata(settings, captions) if captions else {}),
        "content_sha256": version,
        "path": Path(path),
    }
    return metadata, version
