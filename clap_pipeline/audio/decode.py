"""Decode a track's audio (its windows' span) to 48 kHz mono float32 with ffmpeg.

Only the span the window rule asks for is decoded (``windows.WindowRule``: from
``offset_s``, at most ``max_audio_s``): ``-ss``/``-t`` are *input* options, so ffmpeg
seeks and stops reading after it instead of decoding the whole file.
Stereo is averaged to mono (``-ac 1`` with ``rematrix_maxval=1``: plain ``-ac 1``
on float input mixes L and R at 0.707 each, which is louder than the mean).

A file that cannot give a usable window raises :class:`DecodeFailure` with one of
the reasons below; callers record it and move on.

Reasons (``DecodeFailure.reason``):

- ``missing``: the path does not exist (or is not a regular file).
- ``empty``: the file has 0 bytes.
- ``truncated``: the file holds less than its own headers declare: an ID3v2 tag
  longer than the file; ffmpeg's warning that the MP3 (Xing/Info) header's size
  and the file size disagree by more than 1/16; or the decoded window ends early
  although the header's duration says audio continues at least
  ``TRUNCATION_TOLERANCE_S`` past that point (the span stops short of ``max_audio_s``
  or, without one, of the header's duration).
- ``not_audio``: ffmpeg found no decodable audio stream (random bytes, an image,
  an unsupported codec...), i.e. it exited with an error.
- ``too_short``: fewer than ``MIN_DECODED_SAMPLES`` (1 s) of real audio in the
  span (for instance a 0.5-s clip, or an offset past the clip's end).
- ``silent``: the whole span is digital silence (peak below ``SILENCE_PEAK``, -90 dBFS);
  a silent window inside a track with sound is kept.
- ``timeout``: ffmpeg did not finish within the timeout and was killed.
- ``unreadable``: the operating system refused the file (no read permission, a symlink
  loop, an I/O error...); the detail names the error. Like ``timeout``, retried on the
  next run even when the file did not change (permissions change without touching it).
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from clap_pipeline.audio.ffmpeg_bin import FfmpegNotFoundError, ffmpeg_exe
from clap_pipeline.dataset import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE
from clap_pipeline.windows import WindowRule, cut_windows, to_pcm16

MIN_DECODED_SAMPLES = SAMPLE_RATE  # less than 1 s of real audio is a failure
SILENCE_PEAK = 10 ** (-90 / 20)  # about 3.2e-5
TRUNCATION_TOLERANCE_S = 1.0
DEFAULT_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 12

REASONS = (
    "missing",
    "empty",
    "truncated",
    "not_audio",
    "too_short",
    "silent",
    "timeout",
    "unreadable",
)
RETRIED_REASONS = ("timeout", "unreadable")  # may pass next time with the same file

_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# ffmpeg's mp3 demuxer: the Xing/Info header's byte count exceeds the file by > 1/16.
SIZE_MISMATCH_WARNING = "filesize and duration do not match"
_LEVEL_RE = re.compile(r"\[(warning|error|fatal|panic)\]")


class DecodeFailure(Exception):
    """A file that yields no usable window; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, path: Path, detail: str, stderr_tail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason = reason
        self.path = path
        self.detail = detail
        self.stderr_tail = stderr_tail

    def __reduce__(self) -> tuple[type[DecodeFailure], tuple[str, Path, str, str]]:
        # Picklable, so that decode worker processes can hand failures back.
        return (DecodeFailure, (self.reason, self.path, self.detail, self.stderr_tail))


@dataclass(frozen=True)
class DecodedWindow:
    """One window, padded: what :func:`decode_window` gives (the pyfunc model, the tests)."""

    samples: np.ndarray  # float32, exactly CLIP_SAMPLES, zero-padded after n_samples_decoded
    n_samples_decoded: int  # real audio before padding (<= CLIP_SAMPLES)

    @classmethod
    def first_of(cls, audio: np.ndarray) -> DecodedWindow:
        n = min(int(audio.size), CLIP_SAMPLES)
        samples = np.zeros(CLIP_SAMPLES, dtype=np.float32)
        samples[:n] = audio[:n]
        return cls(samples=samples, n_samples_decoded=n)


@dataclass(frozen=True)
class DecodedWindows:
    """A track's windows (``WindowRule``) as 16-bit PCM rows: what a decode worker hands back."""

    start_s: tuple[float, ...]
    pcm: tuple[bytes, ...]  # each window's real samples, s16le (windows.to_pcm16)
    n_samples_decoded: tuple[int, ...]

    @classmethod
    def cut(cls, audio: np.ndarray, rule: WindowRule) -> DecodedWindows:
        starts, windows = cut_windows(audio, rule)
        return cls(
            start_s=tuple(starts),
            pcm=tuple(to_pcm16(w) for w in windows),
            n_samples_decoded=tuple(len(w) for w in windows),
        )

    def __len__(self) -> int:
        return len(self.start_s)


def ensure_ffmpeg(timeout_s: float = 30.0) -> str:
    """Path of a working ffmpeg, or one clear :class:`FfmpegNotFoundError` before any work."""
    return _checked_ffmpeg(ffmpeg_exe(), timeout_s)


@functools.cache
def _checked_ffmpeg(exe: str, timeout_s: float) -> str:
    try:
        proc = subprocess.run(
            [exe, "-hide_banner", "-version"], capture_output=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FfmpegNotFoundError(f"ffmpeg at {exe} cannot be run: {exc}") from exc
    if proc.returncode != 0:
        raise FfmpegNotFoundError(
            f"ffmpeg at {exe} failed `-version` (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-500:]}"
        )
    return exe


def audio_command(
    path: str | Path,
    offset_s: float = 0.0,
    max_audio_s: float | None = CLIP_SECONDS,
    exe: str | None = None,
) -> list[str]:
    """The ffmpeg argv that writes the span (``max_audio_s`` from ``offset_s``; None: to the
    end) as raw f32le 48 kHz mono to stdout."""
    # Without an offset no seek at all: the span starts at the file's first sample.
    seek = {"ss": offset_s} if offset_s > 0 else {}
    length = {"t": max_audio_s} if max_audio_s is not None else {}
    stream = ffmpeg.input(f"file:{path}", **length, **seek)
    out = ffmpeg.output(
        stream["a:0"],
        "pipe:",
        format="f32le",
        acodec="pcm_f32le",
        ac=1,
        ar=SAMPLE_RATE,
        rematrix_maxval=1.0,
    )
    args = out.compile(cmd=exe or ffmpeg_exe())
    # Global options first; -nostdin keeps a pool of ffmpegs from fighting over the tty;
    # "level+info" tags each line with its level so warnings can be told from chatter
    # (the info lines carry the header's duration, needed to spot truncation).
    return [args[0], "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", *args[1:]]


def window_command(path: str | Path, offset_s: float = 0.0, exe: str | None = None) -> list[str]:
    """The ffmpeg argv of one 5-s window from ``offset_s`` (:func:`audio_command`)."""
    return audio_command(path, offset_s, CLIP_SECONDS, exe)


def decode_audio(
    path: str | Path,
    rule: WindowRule | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    exe: str | None = None,
) -> np.ndarray:
    """The span ``rule`` asks for (``max_audio_s`` from ``offset_s``): its real float32 samples.

    Raises :class:`DecodeFailure` (see the module docstring for the reasons), also for
    any error the operating system raises about this one file.
    """
    path = Path(path)
    rule = rule or WindowRule()
    try:
        return _decode_audio(path, rule, timeout_s, exe)
    except FileNotFoundError:
        raise DecodeFailure("missing", path, "file does not exist") from None
    except OSError as exc:
        raise DecodeFailure("unreadable", path, os_error_text(exc)) from None


def decode_window(
    path: str | Path,
    offset_s: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    exe: str | None = None,
) -> DecodedWindow:
    """Decode ``CLIP_SECONDS`` from ``offset_s``; pad with zeros to exactly ``CLIP_SAMPLES``."""
    rule = WindowRule(offset_s=offset_s, max_audio_s=CLIP_SECONDS)
    return DecodedWindow.first_of(decode_audio(path, rule, timeout_s, exe))


def os_error_text(exc: OSError) -> str:
    """``PermissionError: Permission denied`` (the file is named by DecodeFailure)."""
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _decode_audio(path: Path, rule: WindowRule, timeout_s: float, exe: str | None) -> np.ndarray:
    check_file(path)
    cmd = audio_command(path, rule.offset_s, rule.max_audio_s, exe)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DecodeFailure(
            "timeout", path, f"ffmpeg killed after {timeout_s:g} s", tail_lines(exc.stderr or b"")
        ) from None
    stderr = proc.stderr.decode("utf-8", errors="replace")
    raw = proc.stdout
    decoded = np.frombuffer(raw, dtype="<f4", count=len(raw) // 4)
    if proc.returncode != 0:
        raise DecodeFailure(
            "not_audio", path, f"ffmpeg exited with {proc.returncode}", tail_lines(stderr)
        )
    return checked_audio(
        path,
        decoded,
        rule,
        header_s=header_duration_s(stderr),
        size_mismatch=SIZE_MISMATCH_WARNING in stderr,
        stderr_tail=tail_lines(stderr),
    )


def check_file(path: Path) -> None:
    """The checks before decoding: a regular file, not empty, not shorter than its ID3v2 tag."""
    size = path.stat().st_size
    if not path.is_file():
        raise DecodeFailure("missing", path, "not a regular file")
    if size == 0:
        raise DecodeFailure("empty", path, "file has 0 bytes")
    tag_size = id3v2_size(path)
    if tag_size > size:
        raise DecodeFailure(
            "truncated", path, f"ID3v2 tag declares {tag_size} bytes but the file has {size}"
        )


def checked_audio(
    path: Path,
    decoded: np.ndarray,
    rule: WindowRule,
    *,
    header_s: float | None,
    size_mismatch: bool,
    stderr_tail: str,
) -> np.ndarray:
    """The span's real samples (a float32 copy), or the :class:`DecodeFailure` they amount to.

    ``decoded`` is what the decoder gave from ``rule.offset_s`` (48 kHz mono float32, may be
    longer than the span); ``header_s`` the duration the headers declare (None if
    unknown); ``size_mismatch`` whether the MP3 demuxer warned that the file is smaller
    than its Xing/Info header says. One classification for the CLI and in-process paths.
    """
    wanted = rule.max_samples
    decoded = decoded[:wanted] if wanted is not None else decoded
    n = int(decoded.size)
    if size_mismatch:
        raise DecodeFailure(
            "truncated", path, "file is smaller than its MP3 header declares", stderr_tail
        )
    decoded_end_s = rule.offset_s + n / SAMPLE_RATE
    if (
        (wanted is None or n < wanted)
        and header_s is not None
        and header_s - decoded_end_s > TRUNCATION_TOLERANCE_S
    ):
        raise DecodeFailure(
            "truncated",
            path,
            f"audio stops at {decoded_end_s:.2f} s but the header says {header_s:.2f} s",
            stderr_tail,
        )
    if n < MIN_DECODED_SAMPLES:
        raise DecodeFailure(
            "too_short",
            path,
            f"{n / SAMPLE_RATE:.2f} s of audio from {rule.offset_s:g} s (need >= 1 s)",
            stderr_tail,
        )
    peak = float(np.max(np.abs(decoded)))
    if not peak > SILENCE_PEAK:  # also catches NaN
        raise DecodeFailure("silent", path, f"peak {peak:.3g} is silence", stderr_tail)
    return np.array(decoded, dtype=np.float32)


def header_duration_s(stderr: str) -> float | None:
    """The input's duration as ffmpeg reports it from the headers (None for ``N/A``)."""
    match = _DURATION_RE.search(stderr)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def id3v2_size(path: Path) -> int:
    """Bytes an ID3v2 tag at the start of the file claims (header + body), 0 without one."""
    with path.open("rb") as f:
        head = f.read(10)
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    body = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + body + footer


def tail_lines(stderr: str | bytes, lines: int = STDERR_TAIL_LINES) -> str:
    """The last warning/error lines of ffmpeg's stderr (all lines if it has none).

    Consecutive repeats are folded into one line with a count.
    """
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", errors="replace")
    all_lines = [line for line in stderr.strip().splitlines() if line.strip()]
    problems = [line for line in all_lines if _LEVEL_RE.search(line)]
    folded: list[str] = []
    count = 0
    for line in problems or all_lines:
        if folded and line == folded[-1]:
            count += 1
            continue
        if count:
            folded[-1] += f" (x{count + 1})"
        folded.append(line)
        count = 0
    if count:
        folded[-1] += f" (x{count + 1})"
    return "\n".join(folded[-lines:])
