"""Which tracks the experiment uses, computed once for `prompts` and `waveforms`.

The experiment's tracks are the first ``max_tracks`` by track_id (from the
DuckDB ``tracks`` table) whose audio file exists in FMA's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.storage import duckdb_connection


def folder_of(track_id: int) -> str:
    """FMA audio folder (and waveforms partition key) of a track: ``track_id // 1000``."""
    return f"{int(track_id) // 1000:03d}"


def audio_path(audio_dir: str | Path, track_id: int) -> Path:
    """``<audio_dir>/NNN/NNNNNN.mp3`` as in FMA's releases."""
    tid = f"{int(track_id):06d}"
    return Path(audio_dir) / tid[:3] / f"{tid}.mp3"


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
            for row in con.execute("SELECT track_id FROM tracks ORDER BY track_id").fetchall()
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
    import hashlib

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
