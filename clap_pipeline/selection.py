"""Which tracks the experiment uses, computed once for `prompts` and `waveforms`.

The experiment's tracks are the first ``max_tracks`` by track_id (from the
DuckDB ``tracks`` table) whose audio file exists in FMA's layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from clap_pipeline.config import Settings
from clap_pipeline.dataset import SOURCE_TABLE, TRACKS_TABLE, audio_name_id, audio_path, folder_of
from clap_pipeline.storage import duckdb_connection, table_exists


class TracksError(RuntimeError):
    """The DuckDB `tracks` table is missing or lacks a column; the message names what to materialize."""


def stray_audio_files(audio_dir: str | Path, folders: Sequence[str]) -> dict[str, list[str]]:
    """Per audio folder, the names the assets ignore: not ``NNNNNN.mp3`` of that folder.

    For instance ``foo.mp3``, ``42.mp3``, ``000477.MP3`` (upper-case extension) or a
    sub-folder. Folders that do not exist are skipped.
    """
    stray: dict[str, list[str]] = {}
    for folder in folders:
        path = Path(audio_dir) / folder
        if not path.is_dir():
            continue
        names = sorted(p.name for p in path.iterdir() if audio_name_id(folder, p.name) is None)
        if names:
            stray[folder] = names
    return stray


@dataclass(frozen=True)
class SelectedTrack:
    track_id: int
    path: Path

    @property
    def folder(self) -> str:
        return folder_of(self.track_id)


def select_tracks(
    duckdb_path: str | Path, audio_dir: str | Path, max_tracks: int
) -> list[SelectedTrack]:
    """The first ``max_tracks`` tracks by id whose MP3 exists (one stat per candidate)."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"audio folder {audio_dir} does not exist: set FMA_AUDIO_DIR, or run "
            "`clap-pipeline demo-data` / `clap-pipeline fetch-fma`"
        )
    with duckdb_connection(duckdb_path, read_only=True) as con:
        ids = [
            row[0]
            for row in con.execute(
                f"SELECT track_id FROM {TRACKS_TABLE} ORDER BY track_id"
            ).fetchall()
        ]
    # Listing each folder once is far cheaper than stat-ing 106k paths that mostly don't exist.
    present: dict[str, set[str]] = {}
    selected: list[SelectedTrack] = []
    for track_id in ids:
        folder = folder_of(track_id)
        if folder not in present:
            folder_path = audio_dir / folder
            present[folder] = (
                {p.name for p in folder_path.iterdir()} if folder_path.is_dir() else set()
            )
        path = audio_path(audio_dir, track_id)
        if path.name in present[folder]:
            selected.append(SelectedTrack(track_id, path))
            if len(selected) >= max_tracks:
                break
    return selected


def selected_tracks(settings: Settings) -> list[SelectedTrack]:
    """:func:`select_tracks` with the settings' DuckDB file, audio folder and track limit."""
    return select_tracks(settings.duckdb_path, settings.audio_dir, settings.max_tracks)


def data_version(tracks_sha256: str | None, track_ids: Sequence[int]) -> str:
    """What a training run was trained on: tracks.csv's content and the selected track ids.

    Computed the same way from the raw files (the new-tracks sensor) and from the
    DuckDB table plus the audio folder (training), so equal versions mean equal data.
    """
    digest = hashlib.sha256(f"{tracks_sha256 or ''};".encode())
    digest.update(",".join(str(int(i)) for i in sorted(track_ids)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Selection:
    """The experiment's tracks and the data version they make."""

    track_ids: tuple[int, ...]
    tracks_sha256: str | None
    data_version: str

    @classmethod
    def of(cls, track_ids: Sequence[int], tracks_sha256: str | None) -> Selection:
        ids = tuple(sorted(int(i) for i in track_ids))
        return cls(ids, tracks_sha256, data_version(tracks_sha256, ids))


def current_selection(duckdb_path: str | Path, audio_dir: str | Path, max_tracks: int) -> Selection:
    """The selection as the assets see it: table ``tracks`` (and its source's sha256) + audio."""
    tracks = select_tracks(duckdb_path, audio_dir, max_tracks)
    with duckdb_connection(duckdb_path, read_only=True) as con:
        sha = loaded_tracks_sha256(con)
    return Selection.of([t.track_id for t in tracks], sha)


@dataclass(frozen=True)
class InputsState:
    """A cheap fingerprint of the raw inputs, for noticing that new tracks arrived."""

    fingerprint: str
    newest_mtime: float
    exists: bool


def inputs_state(metadata_dir: str | Path, audio_dir: str | Path) -> InputsState:
    """Hash of tracks.csv/genres.csv (size, mtime) and the audio folders' names and mtimes.

    Adding or replacing a clip changes its folder's mtime, so this costs one stat
    per folder (157 at most for FMA), not one per file.
    """
    digest = hashlib.sha256()
    newest = 0.0
    entries: list[Path] = [Path(metadata_dir) / "tracks.csv", Path(metadata_dir) / "genres.csv"]
    audio_dir = Path(audio_dir)
    if audio_dir.is_dir():
        entries += sorted(p for p in audio_dir.iterdir() if p.is_dir())
    exists = entries[0].is_file() and audio_dir.is_dir()
    for entry in entries:
        try:
            st = entry.stat()
        except FileNotFoundError:
            digest.update(f"{entry.name}:missing;".encode())
            continue
        digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        newest = max(newest, st.st_mtime)
    return InputsState(fingerprint=digest.hexdigest()[:16], newest_mtime=newest, exists=exists)


def loaded_tracks_sha256(con: duckdb.DuckDBPyConnection) -> str | None:
    """sha256 of the tracks.csv behind table ``tracks`` (None before the first load)."""
    if not table_exists(con, SOURCE_TABLE):
        return None
    row = con.execute(f"SELECT tracks_sha256 FROM {SOURCE_TABLE}").fetchone()
    return row[0] if row else None


def read_track_values(
    duckdb_path: Path, track_ids: Sequence[int], column: str, *, required: bool = True
) -> dict[int, object]:
    """``column`` of the given tracks from DuckDB ``tracks`` (read-only).

    A table without the column raises (``required``) or reads as no values (``{}``): a
    ``tracks`` table made by hand may lack FMA's optional columns.
    """
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.exists():
        raise TracksError(f"{duckdb_path} does not exist: materialize the `tracks` asset")
    wanted = pa.table({"track_id": pa.array(sorted(set(track_ids)), pa.int64())})
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, TRACKS_TABLE):
            raise TracksError(f"{duckdb_path} has no table `tracks`: materialize `tracks`")
        columns = {row[0] for row in con.execute(f"DESCRIBE {TRACKS_TABLE}").fetchall()}
        if column not in columns:
            if not required:
                return {}
            raise TracksError(
                f"{duckdb_path}: table `tracks` has no column {column}: re-materialize `tracks`"
            )
        con.register("wanted_ids", wanted)
        rows = con.execute(
            f'SELECT t.track_id, t."{column}" FROM {TRACKS_TABLE} t JOIN wanted_ids USING (track_id)'
        ).fetchall()
    return {int(t): value for t, value in rows}


def read_genres(duckdb_path: Path, track_ids: Sequence[int]) -> dict[int, str | None]:
    """``track_genre_top`` of the given tracks from DuckDB ``tracks`` (read-only)."""
    values = read_track_values(duckdb_path, track_ids, "track_genre_top")
    return {t: (str(g) if g else None) for t, g in values.items()}
