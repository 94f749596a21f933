"""Encoding the demo clips: synthesised PCM piped into ffmpeg/libmp3lame, in parallel.

Each track's clip (or its defect: an empty clip, a 0.5-s clip, a file cut mid-frame,
no file) is written at its FMA path; ``encode_all`` runs one ffmpeg per worker thread.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from clap_pipeline.reporting import Log

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from clap_pipeline.audio.ffmpeg_bin import ffmpeg_exe
from clap_pipeline.dataset import audio_path
from clap_pipeline.demo.plan import (
    DEFECT_EMPTY,
    DEFECT_MISSING,
    DEFECT_SHORT,
    DEFECT_TRUNCATED,
    TrackPlan,
)
from clap_pipeline.demo.rendered import render_track
from clap_pipeline.demo.sections import sectioned_clip
from clap_pipeline.demo.synth import CLIP_SECONDS, SR, render_loop
from clap_pipeline.progress import ProgressLog

SHORT_CLIP_SECONDS = 0.5


class DemoDataError(RuntimeError):
    """The demo dataset cannot be written; the message names the path or setting."""


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the MPEG-1 Layer III frames after the ID3v2 tag.

    The last entry may run past the end of ``data`` (a truncated frame).
    """
    bitrates = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    rates = (44_100, 48_000, 32_000)
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = 0
        for byte in data[6:10]:
            size = (size << 7) | (byte & 0x7F)
        pos = 10 + size
    frames = []
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos : pos + 4], "big")
        if (h >> 21) & 0x7FF != 0x7FF or (h >> 19) & 3 != 3 or (h >> 17) & 3 != 1:
            break  # not an MPEG-1 Layer III header (end of audio, e.g. an ID3v1 tag)
        br_index, sr_index, padding = (h >> 12) & 0xF, (h >> 10) & 3, (h >> 9) & 1
        if br_index in (0, 15) or sr_index == 3:
            break
        length = 144_000 * bitrates[br_index] // rates[sr_index] + padding
        frames.append((pos, length))
        pos += length
    return frames


def _encode_args(plan: TrackPlan) -> list[str]:
    mode, value = plan.encoding
    rate = ["-b:a", f"{value}k"] if mode == "cbr" else ["-q:a", str(value)]
    tags: list[str] = []
    for key, text in (
        ("title", plan.title),
        ("artist", plan.artist),
        ("album", plan.row[("album", "title")]),
        ("genre", plan.row[("track", "genre_top")]),
    ):
        if text:
            tags += ["-metadata", f"{key}={text}"]
    number = plan.row[("track", "number")]
    if isinstance(number, int) and number > 0:
        tags += ["-metadata", f"track={number}"]
    return [
        "-c:a", "libmp3lame", *rate,
        # LAME's "fast, ok quality" algorithm: about 3x faster than the default here.
        "-compression_level", "7",
        "-id3v2_version", str(plan.id3_version), "-write_id3v1", "0",
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *tags,
    ]  # fmt: skip


def _widen_pipe(fd: int) -> None:
    """Grow a pipe to 1 MiB (Linux), so a writer thread needs the GIL a few times per
    clip rather than once per 64 KiB; while synthesis holds the GIL, encoders starve."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, 1 << 20)


def encode_mp3(loop: np.ndarray, n_frames: int, out: Path, plan: TrackPlan) -> None:
    """Encode ``n_frames`` stereo frames of ``loop`` repeated, streamed to ffmpeg's stdin.

    Streaming the loop saves building (and copying) the whole 5-MB clip; stderr goes to
    a file so a chatty ffmpeg can never block on a full pipe while we write.
    """
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "s16le", "-ar", str(SR), "-ac", "2", "-i", "pipe:0",
        *_encode_args(plan), "-f", "mp3", str(out),
    ]  # fmt: skip
    loop_bytes = np.ascontiguousarray(loop, dtype="<i2").reshape(-1).view(np.uint8)
    remaining = n_frames * 4
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            assert proc.stdin is not None
            _widen_pipe(proc.stdin.fileno())
            with proc.stdin:
                while remaining > 0 and len(loop_bytes):
                    chunk = loop_bytes[: min(remaining, len(loop_bytes))]
                    proc.stdin.write(memoryview(chunk))
                    remaining -= len(chunk)
        except BrokenPipeError:
            pass  # ffmpeg exited early: its exit status and stderr say why
        finally:
            returncode = proc.wait(timeout=300)
        if returncode != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace")[-800:]
            raise DemoDataError(
                f"ffmpeg failed to encode track {plan.track_id} to {out} (exit {returncode}): {tail}"
            )


def write_clip(
    plan: TrackPlan,
    audio_root: Path,
    audio: np.ndarray | None = None,
    clip_seconds: float = CLIP_SECONDS,
) -> float:
    """Encode one track's clip (or its defect), ``clip_seconds`` long; returns the seconds of
    audio written.

    ``audio``: the clip's int16 PCM made elsewhere (another renderer), instead of rendering it.
    """
    if plan.defect == DEFECT_MISSING:
        return 0.0
    path = audio_path(audio_root, plan.track_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.defect == DEFECT_EMPTY:
        # What the encoder writes for no samples: ID3 tag + LAME info frame, no audio frames.
        encode_mp3(np.zeros((0, 2), "<i2"), 0, path, plan)
        return 0.0
    seconds = SHORT_CLIP_SECONDS if plan.defect == DEFECT_SHORT else clip_seconds
    if plan.defect is None:  # clip lengths vary by a few hundredths, as FMA's do
        jitter = np.random.default_rng([plan.params.seed, 3, plan.track_id]).uniform(-0.03, 0.03)
        seconds += float(jitter)
    n_frames = round(seconds * SR)  # render_clip(params, seconds) is this loop tiled
    if audio is not None:
        loop = audio
    elif plan.params.renderer == "fluidsynth":
        loop = render_track(plan.params, seconds)
    else:
        loop = render_loop(plan.params)
    encode_mp3(loop, n_frames, path, plan)
    if plan.defect == DEFECT_TRUNCATED:
        data = path.read_bytes()
        frames = mp3_frames(data)
        cut = len(frames) * 2 // 3  # past the 5-s window the pipeline reads, inside a frame
        offset, length = frames[cut]
        path.write_bytes(data[: offset + length // 2])
        return cut * 1152 / SR
    return n_frames / SR


def _write_clip(plan: TrackPlan, audio_root: Path, clip_seconds: float, sectioned: bool) -> float:
    audio = None
    if sectioned and plan.defect is None:
        audio = sectioned_clip(plan.params, clip_seconds, plan.track_id)[0]
    return write_clip(plan, audio_root, audio=audio, clip_seconds=clip_seconds)


def encode_all(
    plans: Sequence[TrackPlan],
    audio_root: Path,
    workers: int,
    log: Log,
    clip_seconds: float = CLIP_SECONDS,
    sectioned: bool = False,
) -> float:
    """Encode every clip (``clip_seconds`` long) with a pool of threads, each driving one
    ffmpeg at a time; ``sectioned``: each playable clip is its genre, then another
    (``demo/sections.py``).

    Threads suffice: the encoder runs in its own process, and synthesis is a small
    share of the work. Returns the seconds of audio written.
    """
    seconds = 0.0
    progress = ProgressLog("demo-data", len(plans), log, every_s=5.0)
    log(f"demo-data: encoding {len(plans)} clips with {workers} parallel ffmpeg processes")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-encode") as pool:
        futures = [
            pool.submit(_write_clip, plan, audio_root, clip_seconds, sectioned) for plan in plans
        ]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                seconds += future.result()
                progress.update(done)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return seconds
