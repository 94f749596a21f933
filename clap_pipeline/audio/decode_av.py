"""Decode one 5-s window in this process with the FFmpeg libraries (PyAV), like the CLI does.

:func:`decode_window_av` gives what ``decode.decode_window`` gives (the ffmpeg CLI
path, kept as the reference and the fallback) without starting a process per clip:

- the same window: without an offset no seek at all; with one, a seek of the container
  to ``offset_s`` past its start time, then the decoded samples before that point are
  dropped, as ffmpeg's input ``-ss`` (accurate seek) does; ``CLIP_SECONDS`` of input
  samples are kept, as input ``-t`` does;
- the same conversion: libswresample to 48 kHz mono float32 with ``rematrix_maxval=1``
  (the mean of L and R), through the same ``aresample`` filter the CLI inserts; on
  FMA-like MP3s both paths agree sample for sample (see the tests and docs/decode.md);
- the same failures: the file checks and the classification of the decoded window
  (``decode.check_file``, ``decode.checked_window``) are shared code; the MP3 demuxer's
  "filesize and duration do not match" warning is read from FFmpeg's log (captured per
  call) and the header's duration from the container, rounded as ffmpeg prints it.
  Decoding errors of single packets are skipped as the CLI skips them; a file that
  cannot be opened, has no audio stream or fails more than ffmpeg's default error rate
  (2/3 of the packets) is ``not_audio``, and with ``fallback_exe`` it is handed to the
  CLI path, so that the recorded reason and ffmpeg's own lines are the reference's.
- ``timeout``: checked between packets and at the end (a decode that runs past
  ``timeout_s`` stops). A hang inside one call of the libraries is not interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import av.logging
import numpy as np
from av.audio.resampler import AudioResampler

from clap_pipeline.audio.decode import (
    DEFAULT_TIMEOUT_S,
    SIZE_MISMATCH_WARNING,
    DecodedWindow,
    DecodeFailure,
    check_file,
    checked_window,
    decode_window,
    os_error_text,
    tail_lines,
)
from clap_pipeline.dataset import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE

MAX_ERROR_RATE = 2 / 3  # ffmpeg's default -max_error_rate: more failed packets is an error
_AV_TIME_BASE = 1_000_000
_LEVELS = {
    av.logging.PANIC: "panic",
    av.logging.FATAL: "fatal",
    av.logging.ERROR: "error",
    av.logging.WARNING: "warning",
}


class _NotAudio(Exception):
    def __init__(self, detail: str, tail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.tail = tail  # FFmpeg's captured lines


def decode_window_av(
    path: str | Path,
    offset_s: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallback_exe: str | None = None,
) -> DecodedWindow:
    """Decode ``CLIP_SECONDS`` from ``offset_s`` in-process; pad with zeros to ``CLIP_SAMPLES``.

    Raises :class:`DecodeFailure` with the reasons of ``decode.decode_window``. A file
    that is ``not_audio`` here is decoded again by the ffmpeg at ``fallback_exe`` when
    one is given (its verdict, success or failure, is returned).
    """
    path = Path(path)
    started = time.monotonic()
    try:
        return _decode(path, offset_s, timeout_s)
    except _NotAudio as exc:
        if fallback_exe is None:
            raise DecodeFailure("not_audio", path, exc.detail, exc.tail) from None
        remaining = max(timeout_s - (time.monotonic() - started), 1.0)
        return decode_window(path, offset_s, remaining, fallback_exe)
    except FileNotFoundError:
        raise DecodeFailure("missing", path, "file does not exist") from None
    except OSError as exc:
        raise DecodeFailure("unreadable", path, os_error_text(exc)) from None


def _decode(path: Path, offset_s: float, timeout_s: float) -> DecodedWindow:
    check_file(path)
    _capture_warnings()
    deadline = time.monotonic() + timeout_s
    with av.logging.Capture(local=True) as logs:
        try:
            decoded, header_s = _window(path, offset_s, deadline)
            if time.monotonic() > deadline:  # as the CLI, killed at the deadline, would be
                raise _DeadlineExceeded
        except _DeadlineExceeded:
            raise DecodeFailure(
                "timeout", path, f"decoding stopped after {timeout_s:g} s", _log_tail(logs)
            ) from None
        except _NotAudio as exc:
            raise _NotAudio(exc.detail, _log_tail(logs)) from None
        except av.error.FFmpegError as exc:
            # Also an error of the OS after check_file opened the file (a failed seek of
            # a non-MP3 is EPERM): the CLI fallback then gives the reference's verdict.
            raise _NotAudio(f"FFmpeg libraries: {exc}", _log_tail(logs)) from None
    return checked_window(
        path,
        decoded,
        offset_s,
        header_s=header_s,
        size_mismatch=any(SIZE_MISMATCH_WARNING in message for _, _, message in logs),
        stderr_tail=_log_tail(logs),
    )


def _capture_warnings() -> None:
    """FFmpeg's warnings on (PyAV turns its log off), each one logged (not folded).

    PyAV folds a message repeated from call to call into "repeated N times", which
    would hide the size warning of every truncated file after the first.
    """
    level = av.logging.get_level()
    if level is None or level < av.logging.WARNING:
        av.logging.set_level(av.logging.WARNING)
    if av.logging.get_skip_repeated():
        av.logging.set_skip_repeated(False)


class _DeadlineExceeded(Exception):
    pass


def _log_tail(logs: list[tuple[int, str, str]]) -> str:
    """FFmpeg's captured lines in the CLI's ``-loglevel level+info`` form, as its tail."""
    lines = [
        f"[{name}] [{_LEVELS.get(level, 'info')}] {message.strip()}"
        for level, name, message in logs
    ]
    return tail_lines("\n".join(lines))


def _header_seconds(container: av.container.InputContainer) -> float | None:
    """The container's duration as ffmpeg prints it (``Duration: 00:00:30.00``)."""
    if container.duration is None:
        return None
    return ((container.duration + 5000) // 10_000) / 100  # rounded to 1/100 s, as printed


def _window(path: Path, offset_s: float, deadline: float) -> tuple[np.ndarray, float | None]:
    """48 kHz mono float32 samples of the window (possibly short), and the header's duration."""
    with av.open(f"file:{path}") as container:
        if not container.streams.audio:
            raise _NotAudio("no audio stream")
        stream = container.streams.audio[0]
        header_s = _header_seconds(container)
        start_us = (container.start_time or 0) + round(offset_s * _AV_TIME_BASE)
        if offset_s > 0:
            container.seek(start_us, backward=True, any_frame=False)
        chunks, first = _collect(container, stream, start_us / _AV_TIME_BASE, offset_s, deadline)
    if first is None or not chunks:
        return np.zeros(0, dtype=np.float32), header_s
    return _to_mono_48k(chunks, first), header_s


def _collect(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    start_s: float,
    offset_s: float,
    deadline: float,
) -> tuple[list[np.ndarray], av.AudioFrame | None]:
    """The window's input samples (as ``to_ndarray`` chunks) and the first frame (format)."""
    chunks: list[np.ndarray] = []
    first: av.AudioFrame | None = None
    kept = frames = errors = 0
    want = 0
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise _DeadlineExceeded
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            errors += 1  # the CLI logs the packet's error and goes on
            continue
        for frame in decoded:
            frames += 1
            if first is None:
                first = frame
                want = round(CLIP_SECONDS * frame.sample_rate)
            elif (frame.format.name, frame.layout.name, frame.sample_rate) != (
                first.format.name,
                first.layout.name,
                first.sample_rate,
            ):
                raise _NotAudio("the audio format changes inside the window")
            skip = 0
            if offset_s > 0 and frame.pts is not None and frame.time_base is not None:
                skip = round((start_s - float(frame.pts * frame.time_base)) * frame.sample_rate)
            skip = max(skip, 0)
            if skip >= frame.samples:
                continue  # before the window (the seek lands on a frame before it)
            take = min(frame.samples - skip, want - kept)
            chunks.append(_samples(frame, skip, take))
            kept += take
            if kept >= want:
                return chunks, first
    if errors and errors / (frames + errors) > MAX_ERROR_RATE:
        raise _NotAudio(
            f"{errors} of {frames + errors} packets failed to decode "
            f"(more than ffmpeg's maximum error rate {MAX_ERROR_RATE:.3g})"
        )
    return chunks, first


def _samples(frame: av.AudioFrame, skip: int, take: int) -> np.ndarray:
    """``take`` samples of ``frame`` from ``skip``, in ``to_ndarray``'s layout."""
    array = frame.to_ndarray()
    if frame.format.is_planar:  # (channels, samples)
        return array[:, skip : skip + take]
    channels = frame.layout.nb_channels  # packed: (1, samples * channels)
    return array[:, skip * channels : (skip + take) * channels]


def _to_mono_48k(chunks: list[np.ndarray], first: av.AudioFrame) -> np.ndarray:
    """One frame of the kept samples through libswresample, flushed, as float32 mono."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(np.concatenate(chunks, axis=1)),
        format=first.format.name,
        layout=first.layout.name,
    )
    frame.sample_rate = first.sample_rate
    resampler = AudioResampler(
        format="flt", layout="mono", rate=SAMPLE_RATE, options={"rematrix_maxval": "1.0"}
    )
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    if not out:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(out)[:CLIP_SAMPLES]


DECODERS = ("av", "cli")  # in-process FFmpeg libraries (default) or one ffmpeg CLI per clip


def decode_job(
    decoder: str, path: str | Path, offset_s: float, timeout_s: float, exe: str
) -> DecodedWindow | DecodeFailure:
    """One clip for a worker pool: its window, or its failure as a value (both picklable)."""
    try:
        if decoder == "cli":
            return decode_window(path, offset_s, timeout_s, exe)
        return decode_window_av(path, offset_s, timeout_s, fallback_exe=exe)
    except DecodeFailure as failure:
        return failure
