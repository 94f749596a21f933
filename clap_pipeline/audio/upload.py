"""An uploaded audio query decoded into windows: the service's `POST /api/search/audio`.

The upload is decoded in this process with the FFmpeg libraries (``decode_av``, the
`waveforms` asset's decoder), window after window of the file's first
``rule.max_audio_s`` seconds, under one time limit for the whole file; the decoded span
is cut with the collection's window rule (``windows.cut_windows``). What the file claims
is not trusted: its declared duration is checked against ``max_s`` before decoding, and
the decode's own checks (empty, truncated, not audio, silent, too short) reject it.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np

from clap_pipeline.audio.decode import DecodeFailure
from clap_pipeline.audio.decode_av import decode_window_av
from clap_pipeline.windows import CLIP_SAMPLES, CLIP_SECONDS, WindowRule, cut_windows


class UploadRejected(ValueError):
    """The upload is not a usable audio query; ``reason`` says why in a word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def declared_seconds(path: Path) -> float | None:
    """The duration the container declares (None when it declares none or cannot be read)."""
    try:
        with av.open(f"file:{path}") as container:
            if container.duration is None:
                return None
            return container.duration / 1_000_000
    except (av.error.FFmpegError, OSError, ValueError):
        return None  # the decode below says what is wrong with it


def decode_upload(path: Path, *, rule: WindowRule, timeout_s: float, max_s: float) -> np.ndarray:
    """The upload's windows (n, ``CLIP_SAMPLES``) float32, zero-padded as the rule says.

    Raises :class:`UploadRejected` (reason ``too_long``, ``timeout`` or a decode reason).
    """
    declared = declared_seconds(path)
    if declared is not None and declared > max_s:
        raise UploadRejected("too_long", f"the file declares {declared:.0f} s; at most {max_s:g} s")
    deadline = time.monotonic() + timeout_s
    limit_s = min(max_s, rule.max_audio_s or max_s)
    pieces: list[np.ndarray] = []
    offset = rule.offset_s
    while offset < rule.offset_s + limit_s:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UploadRejected("timeout", f"decoding took longer than {timeout_s:g} s")
        try:
            window = decode_window_av(path, offset, remaining)
        except DecodeFailure as failure:
            if failure.reason == "timeout":
                message = f"decoding took longer than {timeout_s:g} s"
                raise UploadRejected("timeout", message) from None
            if not pieces:
                message = f"{failure.reason}: {failure.detail}"
                raise UploadRejected(failure.reason, message) from None
            break  # the audio ended (or turned to silence) after the first window
        except Exception as exc:  # hostile bytes reach corners of the libraries: not audio
            message = f"not_audio: the FFmpeg libraries failed ({type(exc).__name__}: {exc})"
            raise UploadRejected("not_audio", message) from None
        pieces.append(window.samples[: window.n_samples_decoded])
        if window.n_samples_decoded < CLIP_SAMPLES:
            break
        offset += CLIP_SECONDS
    span = np.concatenate(pieces)
    _, windows = cut_windows(span, WindowRule(hop_s=rule.hop_s, max_audio_s=limit_s))
    out = np.zeros((len(windows), CLIP_SAMPLES), dtype=np.float32)
    for row, samples in zip(out, windows, strict=True):
        row[: len(samples)] = samples
    return out
