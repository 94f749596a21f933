"""`clap-pipeline demo-data`: an offline FMA-format dataset whose audio follows its metadata.

Writes ``<out>/fma_metadata/{tracks.csv,genres.csv}`` and ``<out>/fma_audio/NNN/NNNNNN.mp3``
(and ``captions.csv``, what each clip plays in words: ``demo/captions.py``) in the shape of the real release (three-line pandas header, 52 columns, Python-repr
lists, ``-1`` gaps, HTML/newlines in free text, sparse ids, mixed MP3 encodings,
ID3v2 tags) so the whole pipeline runs without a download.

The audio follows the metadata so that a model can learn a text <-> audio mapping
from the first seconds of a clip: the top-level genre of a track's first genre picks
the arrangement, its tempo/register/tone tags shape it (see ``demo_audio``). Clips
are piped as PCM into ffmpeg/libmp3lame, in parallel. A few tracks are FMA-style
defects: an empty clip, a 0.5-s clip, a file cut mid-frame and a listed track
without a file.

Everything is a function of the seed: the same seed gives the same tracks.csv
bytes and the same MP3 bytes (with the same ffmpeg build).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clap_pipeline.audio.ffmpeg_bin import ffmpeg_exe
from clap_pipeline.config import DEFAULT_MAX_TRACKS
from clap_pipeline.dataset import MAX_TRACK_ID, TRACKS_PER_FOLDER, folder_of
from clap_pipeline.demo.captions import CAPTIONS_NAME, captions_csv_text
from clap_pipeline.demo.encode import DemoDataError, encode_all
from clap_pipeline.demo.plan import (
    DEFECT_KINDS,
    DEFECT_MISSING,
    GENRE_BY_ID,
    MIN_TRACKS,
    TOP_OF_STYLE,
    TrackPlan,
    audio_params,
    genres_csv_text,
    plan_dataset,
    tracks_csv_text,
)
from clap_pipeline.demo.rendered import fluidsynth_exe, soundfont
from clap_pipeline.demo.sections import track_sections
from clap_pipeline.demo.synth import CLIP_SECONDS
from clap_pipeline.metadata.fma import read_track_ids
from clap_pipeline.processes import usable_cpus
from clap_pipeline.reporting import Log
from clap_pipeline.sections import SECTIONS_NAME, sections_csv_text
from clap_pipeline.storage import atomic_path, write_text_atomic

MARKER_NAME = ".clap-demo-dataset.json"
GENERATOR = "clap-pipeline demo-data"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DemoSummary:
    out_root: Path
    tracks_csv: Path
    genres_csv: Path
    audio_dir: Path
    n_tracks: int
    n_clips: int
    folders: tuple[str, ...]
    genre_counts: dict[str, int]
    defects: dict[str, int]
    seed: int
    audio_seconds: float
    elapsed_s: float

    def __str__(self) -> str:
        genres = ", ".join(f"{name} {count}" for name, count in self.genre_counts.items())
        defects = ", ".join(f"{kind} {tid:06d}" for kind, tid in self.defects.items())
        return (
            f"demo dataset (seed {self.seed}) written in {self.elapsed_s:.1f} s to {self.out_root}\n"
            f"  metadata: {self.tracks_csv} ({self.n_tracks} tracks), {self.genres_csv}\n"
            f"  audio:    {self.audio_dir} ({self.n_clips} MP3 files in folders "
            f"{', '.join(self.folders)}; {self.audio_seconds / 60:.1f} min of audio)\n"
            f"  genres:   {genres}\n"
            f"  defects:  {defects}"
        )


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _marker(
    seed: int,
    n_tracks: int,
    tracks_sha256: str | None = None,
    renderer: str = "synth",
    clip_seconds: float = CLIP_SECONDS,
) -> str:
    content: dict[str, object] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_tracks": n_tracks,
    }
    if renderer != "synth":  # synthesised collections keep their marker bytes
        content["renderer"] = renderer
    if clip_seconds != CLIP_SECONDS:  # so do collections of the default clip length
        content["clip_seconds"] = clip_seconds
    if tracks_sha256:
        content["tracks_csv_sha256"] = tracks_sha256
    return json.dumps(content, indent=2) + "\n"


def _is_demo_dir(directory: Path, tracks_csv: Path | None = None) -> bool:
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("generator") != GENERATOR:
        return False
    if tracks_csv is not None and tracks_csv.exists():
        digest = hashlib.sha256(tracks_csv.read_bytes()).hexdigest()
        return marker.get("tracks_csv_sha256") == digest
    return True


def check_replaceable(out_root: Path) -> None:
    """Refuse to replace metadata or audio that the generator did not write."""
    if out_root.exists() and not out_root.is_dir():
        raise DemoDataError(f"demo-data output {out_root} is a file, not a folder (--out)")
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    tracks_csv = metadata_dir / "tracks.csv"
    for directory, csv_path in ((metadata_dir, tracks_csv), (audio_dir, None)):
        if not directory.exists() or not any(directory.iterdir()):
            continue
        if not _is_demo_dir(directory, csv_path):
            what = csv_path if csv_path is not None and csv_path.exists() else directory
            raise DemoDataError(
                f"{what} exists and was not written by `clap-pipeline demo-data` (no matching "
                f"{MARKER_NAME} in {directory}): refusing to replace what may be a real FMA "
                "dataset. Pass another --out (or set CLAP_DATA_DIR), or move it away yourself."
            )


def write_demo_dataset(
    out_root: Path,
    n_tracks: int = DEFAULT_MAX_TRACKS,
    seed: int = 0,
    *,
    renderer: str = "synth",
    clip_seconds: float = CLIP_SECONDS,
    sectioned: bool = False,
    workers: int | None = None,
    log: Log | None = _stderr_log,
) -> DemoSummary:
    """Write the demo dataset under ``out_root`` (fma_metadata/, fma_audio/) atomically;
    ``sectioned``: every playable clip is its genre then another, and ``sections.csv`` says
    where (``demo/sections.py``; tracks added later with ``--add`` are not sectioned).

    Both folders are built in hidden temporary siblings and renamed into place, audio
    first, so a crash leaves the previous dataset (or none). Raises DemoDataError if
    ``out_root`` holds metadata or audio the generator did not write.
    """
    started = time.monotonic()
    out_root = Path(out_root)
    log = log or (lambda _message: None)
    plans = plan_dataset(n_tracks, seed, renderer)  # validates before touching the disk
    check_replaceable(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    _note_leftovers(out_root, log)
    ffmpeg_exe()  # fail early and clearly when ffmpeg (or FluidSynth) is missing
    if renderer == "fluidsynth":
        fluidsynth_exe(), soundfont()
    workers = workers or usable_cpus() + 1  # one extra keeps every core encoding
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"

    with atomic_path(metadata_dir) as meta_tmp, atomic_path(audio_dir) as audio_tmp:
        audio_tmp.mkdir()
        audio_seconds = encode_all(plans, audio_tmp, workers, log, clip_seconds, sectioned)
        (audio_tmp / MARKER_NAME).write_text(
            _marker(seed, n_tracks, None, renderer, clip_seconds), encoding="utf-8"
        )
        meta_tmp.mkdir()
        tracks_text = tracks_csv_text(plans).encode("utf-8")
        (meta_tmp / "tracks.csv").write_bytes(tracks_text)
        (meta_tmp / "genres.csv").write_text(genres_csv_text(plans), encoding="utf-8")
        # What each clip plays, in words: a captions table for CLAP_CAPTIONS.
        (meta_tmp / CAPTIONS_NAME).write_text(captions_csv_text(plans, seed), encoding="utf-8")
        if sectioned:  # which genre plays where: the evaluation's moment accuracy
            sections = _sections_text(plans, clip_seconds)
            (meta_tmp / SECTIONS_NAME).write_text(sections, encoding="utf-8")
        digest = hashlib.sha256(tracks_text).hexdigest()
        (meta_tmp / MARKER_NAME).write_text(
            _marker(seed, n_tracks, digest, renderer, clip_seconds), encoding="utf-8"
        )
        # Leaving the block renames audio into place first, then the metadata.
    return _summary(out_root, plans, seed, audio_seconds, time.monotonic() - started)


def _sections_text(plans: list[TrackPlan], clip_seconds: float) -> str:
    playable = [p for p in plans if p.defect is None]
    return sections_csv_text(
        [s for p in playable for s in track_sections(p.params, clip_seconds, p.track_id)]
    )


def _note_leftovers(out_root: Path, log: Log) -> None:
    """Say which temporary folders of an interrupted run ``out_root`` holds."""
    leftovers = sorted(
        p.name
        for pattern in (".fma_audio.*.tmp", ".fma_metadata.*.tmp", ".fma_*.old")
        for p in out_root.glob(pattern)
    )
    if leftovers:  # not removed here: another process might be writing them right now
        log(
            f"demo-data: note: {out_root} holds temporary folders of an interrupted run, "
            f"safe to delete when nothing runs: {', '.join(leftovers)}"
        )


def _summary(
    out_root: Path, plans: list[TrackPlan], seed: int, audio_seconds: float, elapsed_s: float
) -> DemoSummary:
    genre_counts: dict[str, int] = {}
    for plan in plans:
        name = GENRE_BY_ID[TOP_OF_STYLE[plan.params.style]][2]
        genre_counts[name] = genre_counts.get(name, 0) + 1
    with_files = [p for p in plans if p.defect != DEFECT_MISSING]
    return DemoSummary(
        out_root=out_root,
        tracks_csv=out_root / "fma_metadata" / "tracks.csv",
        genres_csv=out_root / "fma_metadata" / "genres.csv",
        audio_dir=out_root / "fma_audio",
        n_tracks=len(plans),
        n_clips=len(with_files),
        folders=tuple(sorted({folder_of(p.track_id) for p in with_files})),
        genre_counts=dict(sorted(genre_counts.items())),
        defects={p.defect: p.track_id for p in plans if p.defect is not None},
        seed=seed,
        audio_seconds=audio_seconds,
        elapsed_s=elapsed_s,
    )


@dataclass(frozen=True)
class AddedTracks:
    tracks_csv: Path
    folder: Path
    track_ids: tuple[int, ...]
    elapsed_s: float

    def __str__(self) -> str:
        return (
            f"added {len(self.track_ids)} tracks (ids {self.track_ids[0]}-{self.track_ids[-1]}) "
            f"in {self.elapsed_s:.1f} s: rows appended to {self.tracks_csv}, clips in "
            f"{self.folder}"
        )


def add_demo_tracks(
    out_root: Path,
    n_new: int,
    *,
    workers: int | None = None,
    log: Log | None = _stderr_log,
) -> AddedTracks:
    """Append ``n_new`` playable tracks to a demo dataset, in a new audio folder.

    New tracks "arriving": rows appended to tracks.csv (atomically replaced) and their
    clips in the next unused folder, written before the rows so that a crash leaves at
    most clips without metadata. Reproducible: the batch depends on the dataset's seed
    and the ids already present.
    """
    started = time.monotonic()
    log = log or (lambda _message: None)
    out_root = Path(out_root)
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    tracks_csv = metadata_dir / "tracks.csv"
    _check_addable(out_root, n_new)
    marker = json.loads((metadata_dir / MARKER_NAME).read_text(encoding="utf-8"))
    existing = read_track_ids(tracks_csv)
    base = (max(existing) // TRACKS_PER_FOLDER + 1) * TRACKS_PER_FOLDER
    if base + n_new > MAX_TRACK_ID:
        raise DemoDataError(f"{tracks_csv}: no free audio folder left for new track ids")
    renderer = str(marker.get("renderer", "synth"))
    clip_seconds = float(marker.get("clip_seconds", CLIP_SECONDS))
    plans = _new_track_plans(n_new, base, marker["seed"], renderer)
    folder = audio_dir / folder_of(base)
    with atomic_path(folder) as tmp:
        # write_clip writes <root>/NNN/NNNNNN.mp3: encode under tmp's parent-like root.
        staging_root = tmp.with_name(tmp.name + ".root")
        try:
            encode_all(plans, staging_root, workers or usable_cpus() + 1, log, clip_seconds)
            os.replace(staging_root / folder.name, tmp)
        finally:
            with contextlib.suppress(OSError):
                staging_root.rmdir()
    rows = tracks_csv_text(plans).split("\n", 3)[3]  # the records, without the header
    text = tracks_csv.read_text(encoding="utf-8")
    text = (text if text.endswith("\n") else text + "\n") + rows
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    write_text_atomic(tracks_csv, text)
    captions = metadata_dir / CAPTIONS_NAME
    if captions.exists():  # the new tracks' captions after the others (no header)
        new_rows = captions_csv_text(plans, marker["seed"]).split("\n", 1)[1]
        write_text_atomic(captions, captions.read_text(encoding="utf-8") + new_rows)
    write_text_atomic(
        metadata_dir / MARKER_NAME,
        _marker(marker["seed"], len(existing) + n_new, digest, renderer, clip_seconds),
    )
    return AddedTracks(
        tracks_csv=tracks_csv,
        folder=folder,
        track_ids=tuple(p.track_id for p in plans),
        elapsed_s=time.monotonic() - started,
    )


def _check_addable(out_root: Path, n_new: int) -> None:
    """DemoDataError unless ``n_new`` tracks fit one folder of the demo dataset in ``out_root``."""
    metadata_dir, audio_dir = out_root / "fma_metadata", out_root / "fma_audio"
    if not 1 <= n_new <= 999:
        raise DemoDataError(f"--add must be between 1 and 999 (one new audio folder), got {n_new}")
    if not (_is_demo_dir(metadata_dir, metadata_dir / "tracks.csv") and _is_demo_dir(audio_dir)):
        raise DemoDataError(
            f"{out_root} does not hold an unmodified demo dataset (no matching {MARKER_NAME}): "
            "--add only extends what `clap-pipeline demo-data` wrote"
        )


def _new_track_plans(n_new: int, base: int, seed: int, renderer: str) -> list[TrackPlan]:
    """``n_new`` playable tracks with ids from ``base + 1``; artist and album ids moved clear
    of the existing ones; the same batch for the same seed and base."""
    batch = plan_dataset(
        max(n_new + len(DEFECT_KINDS), MIN_TRACKS), seed=seed + base, renderer=renderer
    )
    plans = [p for p in batch if p.defect is None][:n_new]
    for k, plan in enumerate(plans):
        plan.track_id = base + 1 + k
        plan.row[("artist", "id")] = int(plan.row[("artist", "id")]) + base * 100  # type: ignore[call-overload]
        if plan.row[("album", "id")] != -1:
            plan.row[("album", "id")] = int(plan.row[("album", "id")]) + base * 100  # type: ignore[call-overload]
        plan.params = audio_params(
            plan.track_id,
            plan.row[("track", "genres")],  # type: ignore[arg-type]
            plan.row[("track", "tags")],  # type: ignore[arg-type]
            seed,
            renderer,
        )
    return plans
