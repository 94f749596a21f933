"""The `waveforms` asset's work for some audio folders: decode the selected tracks, drop the
partitions no track needs any more, report stray files and failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clap_pipeline.audio.waveforms import (
    DecodeOptions,
    build_waveforms,
    group_by_folder,
    remove_unselected_partitions,
)
from clap_pipeline.config import Settings
from clap_pipeline.reporting import Log, warn
from clap_pipeline.selection import selected_tracks, stray_audio_files

MAX_LOGGED_FAILURES = 20
MAX_LISTED_STRAY = 20  # names per folder in the log and metadata


def folders_label(folders: Sequence[str]) -> str:
    if len(folders) <= 6:
        return ", ".join(folders)
    return f"{folders[0]} ... {folders[-1]}"


def _report_stray(settings: Settings, stray: dict[str, list[str]], log: Log) -> None:
    for folder, names in stray.items():
        shown = ", ".join(names[:MAX_LISTED_STRAY])
        more = f" ... ({len(names)} in all)" if len(names) > MAX_LISTED_STRAY else ""
        warn(
            log,
            f"audio folder {settings.audio_dir / folder}: {len(names)} file(s) not named like "
            f"FMA clips of this folder ({folder}NNN.mp3), ignored: {shown}{more}",
        )


def _report_failures(
    settings: Settings, failures: Sequence, new_failures: Sequence, log: Log
) -> None:
    for f in new_failures[:MAX_LOGGED_FAILURES]:
        warn(log, f"track {f.track_id} skipped ({f.reason}): {f.path}: {f.detail}")
    if len(new_failures) > MAX_LOGGED_FAILURES:
        warn(
            log,
            f"... and {len(new_failures) - MAX_LOGGED_FAILURES} more failures: see the DuckDB "
            f"table decode_failures in {settings.duckdb_path}",
        )
    if len(failures) > len(new_failures):
        log(f"{len(failures) - len(new_failures)} failures of earlier runs kept (files unchanged)")


def materialize_waveforms(
    settings: Settings, folders: Sequence[str], options: DecodeOptions, log: Log
) -> dict[str, object]:
    """Decode the selected tracks of ``folders``; the materialization metadata."""
    folders = sorted(folders)
    selected = group_by_folder(selected_tracks(settings))
    work = {folder: selected.get(folder, []) for folder in folders}
    n_tracks = sum(len(t) for t in work.values())
    log(
        f"waveforms: {n_tracks} selected tracks in {len(folders)} audio folder partition(s) "
        f"{folders_label(folders)}"
    )
    stray = stray_audio_files(settings.audio_dir, folders)
    _report_stray(settings, stray, log)
    summary = build_waveforms(
        work,
        settings.waveforms_dir,
        settings.duckdb_path,
        options,
        progress=lambda p: log(str(p)),
    )
    removed = remove_unselected_partitions(settings.waveforms_dir, settings.duckdb_path, selected)
    if removed:
        log(f"removed partitions without selected tracks: {removed}")
    _report_failures(settings, summary.failures, summary.new_failures, log)
    return {
        "partitions": len(folders),
        "selected": summary.selected,
        "rows": summary.rows,
        "decoded": summary.decoded,
        "reused": summary.reused,
        "failures": len(summary.failures),
        "failure_reasons": summary.failure_counts(),
        "rewritten_partitions": sum(p.rewritten for p in summary.partitions),
        "seconds": round(summary.seconds, 2),
        "tracks_per_s": round(summary.tracks_per_s, 2),
        "window_offset_s": options.window_offset_s,
        "path": Path(settings.waveforms_dir),
        "removed_partitions": list(removed),
        "stray_files": sum(len(names) for names in stray.values()),
        "stray_file_names": {folder: names[:MAX_LISTED_STRAY] for folder, names in stray.items()},
    }
