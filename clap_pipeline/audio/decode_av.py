"""Decode a track's span in this process with the FFmpeg libraries (PyAV), like the CLI does.

:func:`decode_audio_av` gives what ``decode.decode_audio`` gives (the ffmpeg CLI
path, kept as the reference and the fallback) without starting a process per clip:

- the same span: without an offset no seek at all; with one, a seek of the container
  to ``offset_s`` past its start time, then the decoded samples before that point are
  dropped, as ffmpeg's input ``-ss`` (accurate seek) does; ``max_audio_s`` of input
  samples are kept (all without one), as input ``-t`` does;
- the same conversion: libswresample to 48 kHz mono float32 with ``rematrix_maxval=1``
  (the mean of L and R), through the same ``aresample`` filter the CLI inserts, except
  that stereo float input is averaged before resampling, not after (3x less
  resampling; differences of float rounding only: see the tests and docs/decode.md);
- the same failures: the file checks and the classification of the decoded window
  (``decode.check_file``, ``decode.checked_audio``) are shared code; the MP3 demuxer's
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
    DecodedWindows,
    DecodeFailure,
    check_file,
    checked_audio,
    decode_audio,
    os_error_text,
    tail_lines,
)
from clap_pipeline.dataset import CLIP_SECONDS, SAMPLE_RATE
from clap_pipeline.windows import WindowRule

# Input samples per frame handed to libswresample: the same output as one frame (its
# filter state carries over), about 3x faster than one 5-s frame (benchmarks/bench_decode.py).
RESAMPLE_CHUNK = 16_384
_UNBOUNDED_START_S = 60.0  # room for this much input at first when the span has no end
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
    """Decode ``CLIP_SECONDS`` from ``offset_s`` in-process; pad with zeros to ``CLIP_SAMPLES``."""
    rule = WindowRule(offset_s=offset_s, max_audio_s=CLIP_SECONDS)
    return DecodedWindow.first_of(decode_audio_av(path, rule, timeout_s, fallback_exe))


def decode_audio_av(
    path: str | Path,
    rule: WindowRule | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fallback_exe: str | None = None,
) -> np.ndarray:
    """The span ``rule`` asks for, decoded in-process: its real float32 samples.

    Raises :class:`DecodeFailure` with the reasons of ``decode.decode_audio``. A file
    that is ``not_audio`` here is decoded again by the ffmpeg at ``fallback_exe`` when
    one is given (its verdict, success or failure, is returned).
    """
    path = Path(path)
    rule = rule or WindowRule()
    started = time.monotonic()
    try:
        return _decode(path, rule, timeout_s)
    except _NotAudio as exc:
        if fallback_exe is None:
            raise DecodeFailure("not_audio", path, exc.detail, exc.tail) from None
        remaining = max(timeout_s - (time.monotonic() - started), 1.0)
        return decode_audio(path, rule, remaining, fallback_exe)
    except FileNotFoundError:
        raise DecodeFailure("missing", path, "file does not exist") from None
    except OSError as exc:
        raise DecodeFailure("unreadable", path, os_error_text(exc)) from None


def _decode(path: Path, rule: WindowRule, timeout_s: float) -> np.ndarray:
    check_file(path)
    _capture_warnings()
    deadline = time.monotonic() + timeout_s
    with av.logging.Capture(local=True) as logs:
        try:
            decoded, header_s = _span(path, rule, deadline)
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
    return checked_audio(
        path,
        decoded,
        rule,
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


def _span(path: Path, rule: WindowRule, deadline: float) -> tuple[np.ndarray, float | None]:
    """48 kHz mono float32 samples of the span (possibly short), and the header's duration."""
    offset_s = rule.offset_s
    with av.open(f"file:{path}") as container:
        if not container.streams.audio:
            raise _NotAudio("no audio stream")
        stream = container.streams.audio[0]
        header_s = _header_seconds(container)
        start_us = (container.start_time or 0) + round(offset_s * _AV_TIME_BASE)
        if offset_s > 0:
            container.seek(start_us, backward=True, any_frame=False)
        window = _collect(
            container, stream, start_us / _AV_TIME_BASE, offset_s, rule.max_audio_s, deadline
        )
    if window is None or not window.kept:
        return np.zeros(0, dtype=np.float32), header_s
    return window.to_mono_48k(), header_s


class _InputSamples:
    """The span's decoded samples, copied frame by frame into one array in the input format.

    Laid out as PyAV's ``to_ndarray``: (channels, samples) for planar formats (MP3's
    fltp), (1, samples * channels) for packed ones. Sized for ``max_audio_s`` (grown by
    doubling without one).
    """

    def __init__(self, first: av.AudioFrame, max_audio_s: float | None) -> None:
        self.key = (first.format.name, first.layout.name, first.sample_rate)
        self.planar = first.format.is_planar
        self.width = 1 if self.planar else first.layout.nb_channels  # values per sample and row
        self.want = None if max_audio_s is None else round(max_audio_s * first.sample_rate)
        self.dtype = first.to_ndarray().dtype
        rows = first.layout.nb_channels if self.planar else 1
        capacity = self.want or round(_UNBOUNDED_START_S * first.sample_rate)
        self.array = np.empty((rows, capacity * self.width), dtype=self.dtype)
        self.kept = 0

    def add(self, frame: av.AudioFrame, skip: int) -> bool:
        """Append ``frame`` from sample ``skip`` on; True once the span is complete."""
        take = frame.samples - skip
        if self.want is not None:
            take = min(take, self.want - self.kept)
        w = self.width
        if (self.kept + take) * w > self.array.shape[1]:  # no max_audio_s: grow
            grown = np.empty((self.array.shape[0], 2 * self.array.shape[1]), dtype=self.dtype)
            grown[:, : self.kept * w] = self.array[:, : self.kept * w]
            self.array = grown
        for row, plane in enumerate(frame.planes[: self.array.shape[0]]):
            values = np.frombuffer(plane, dtype=self.dtype, count=frame.samples * w)
            self.array[row, self.kept * w : (self.kept + take) * w] = values[
                skip * w : (skip + take) * w
            ]
        self.kept += take
        return self.want is not None and self.kept >= self.want

    def to_mono_48k(self) -> np.ndarray:
        """The kept samples through libswresample (in chunks, then flushed), float32 mono.

        Planar float stereo (MP3) is averaged here first, so that one channel instead
        of two is resampled (3x faster); the CLI's libswresample resamples both and then
        mixes them at 0.5 each. Both orders are exact in real numbers; in float32 they
        differ by rounding only (about 1e-7, see docs/decode.md). Other layouts go
        through libswresample's own mix, as in the CLI.
        """
        fmt, layout, rate = self.key
        samples = self.array[:, : self.kept * self.width]
        if layout == "stereo" and fmt == "fltp":
            samples = ((samples[0] + samples[1]) * np.float32(0.5))[None, :]
            layout = "mono"
        resampler = AudioResampler(
            format="flt", layout="mono", rate=SAMPLE_RATE, options={"rematrix_maxval": "1.0"}
        )
        out = []
        width = 1 if layout == "mono" or self.planar else self.width  # values per sample
        step = RESAMPLE_CHUNK * width
        for start in range(0, samples.shape[1], step):
            chunk = np.ascontiguousarray(samples[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
            frame.sample_rate = rate
            out += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        out += [f.to_ndarray()[0] for f in resampler.resample(None)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out)


def _collect(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    start_s: float,
    offset_s: float,
    max_audio_s: float | None,
    deadline: float,
) -> _InputSamples | None:
    """The span's input samples (None when no frame decoded)."""
    window: _InputSamples | None = None
    frames = errors = 0
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
            if window is None:
                window = _InputSamples(frame, max_audio_s)
            elif (frame.format.name, frame.layout.name, frame.sample_rate) != window.key:
                raise _NotAudio("the audio format changes inside the window")
            skip = 0
            if offset_s > 0 and frame.pts is not None and frame.time_base is not None:
                skip = max(
                    round((start_s - float(frame.pts * frame.time_base)) * frame.sample_rate), 0
                )
            if skip >= frame.samples:
                continue  # before the window (the seek lands on a frame before it)
            if window.add(frame, skip):
                return window
    if errors and errors / (frames + errors) > MAX_ERROR_RATE:
        raise _NotAudio(
            f"{errors} of {frames + errors} packets failed to decode "
            f"(more than ffmpeg's maximum error rate {MAX_ERROR_RATE:.3g})"
        )
    return window


DECODERS = ("av", "cli")  # in-process FFmpeg libraries (default) or one ffmpeg CLI per clip


def decode_job(
    decoder: str, path: str | Path, rule: WindowRule, timeout_s: float, exe: str
) -> DecodedWindows | DecodeFailure:
    """One track for a worker pool: its windows as 16-bit PCM (cut here, in the worker), or
    its failure as a value (both picklable)."""
    try:
        if decoder == "cli":
            audio = decode_audio(path, rule, timeout_s, exe)
        else:
            audio = decode_audio_av(path, rule, timeout_s, fallback_exe=exe)
    except DecodeFailure as failure:
        return failure
    return DecodedWindows.cut(audio, rule)
