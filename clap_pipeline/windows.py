"""What a window of a track is: the one definition that decoding, training, the embeddings,
evaluation and search use.

A *window* is ``CLIP_SECONDS`` (5 s, the recipe's input) of 48 kHz mono audio,
``CLIP_SAMPLES`` (240,000) samples. A track's windows follow a :class:`WindowRule`:

- its audio is decoded from ``offset_s`` for at most ``max_audio_s`` seconds (default 30 s:
  a whole FMA clip; ``None``: to the end of the file, for a collection of whole songs);
- window ``k`` starts ``k * hop_s`` seconds into that span (``start_s = offset_s + k * hop_s``;
  ``hop_s`` defaults to the window length: windows side by side, no overlap);
- every full window is kept; the first window that runs past the end of the audio (the
  *partial last window*) is kept when it holds at least ``MIN_PARTIAL_S`` (half a window)
  of audio or when it is the track's only window, and is **padded with zeros** to
  ``CLIP_SAMPLES`` when read (the stored row holds its real samples only); later,
  shorter windows are dropped. A 29.98-s FMA clip gives six windows (the sixth with
  4.98 s of audio); a 32-s song gives six (2 s left over: dropped); a 3-s clip one.

Stored waveform rows hold one window each as 16-bit PCM (:func:`to_pcm16`,
:func:`from_pcm16`: ffmpeg's float <-> s16 conversion, so at most one step of 1/32768
from the decoded float), half the bytes of float32.

Imports nothing of the project: ``dataset.py`` re-exports the clip constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 48_000
CLIP_SECONDS = 5  # window_s: the recipe's input length (not a setting: the model's input)
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS  # 240,000
DEFAULT_MAX_AUDIO_S = 30.0  # a whole FMA clip
MIN_PARTIAL_S = CLIP_SECONDS / 2  # a partial last window shorter than this is dropped
PCM_SCALE = 32768.0  # int16 <-> float as ffmpeg converts (s16 / 32768)


@dataclass(frozen=True)
class WindowRule:
    """Which windows of a track's audio are decoded, stored and embedded (module docstring)."""

    offset_s: float = 0.0  # where the first window starts in the file
    hop_s: float | None = None  # None: the window length (5 s)
    max_audio_s: float | None = DEFAULT_MAX_AUDIO_S  # None: the whole file

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_s) and self.offset_s >= 0):
            raise ValueError(f"window offset_s must be >= 0, got {self.offset_s}")
        if self.hop_s is not None and not (math.isfinite(self.hop_s) and self.hop_s > 0):
            raise ValueError(f"window hop_s must be > 0 (or None: the window), got {self.hop_s}")
        if self.max_audio_s is not None and not (
            math.isfinite(self.max_audio_s) and self.max_audio_s >= 1
        ):
            raise ValueError(
                f"max_audio_s must be >= 1 s (or None: the whole track), got {self.max_audio_s}"
            )

    @property
    def hop(self) -> float:
        """Seconds between window starts."""
        return float(CLIP_SECONDS if self.hop_s is None else self.hop_s)

    @property
    def hop_samples(self) -> int:
        return round(self.hop * SAMPLE_RATE)

    @property
    def max_samples(self) -> int | None:
        """Samples of audio decoded per track at most (None: all)."""
        return None if self.max_audio_s is None else round(self.max_audio_s * SAMPLE_RATE)

    def spans(self, n_samples: int) -> list[tuple[int, int]]:
        """(first sample, real samples) of each window of ``n_samples`` decoded samples."""
        n = int(n_samples) if self.max_samples is None else min(int(n_samples), self.max_samples)
        hop, min_partial = self.hop_samples, round(MIN_PARTIAL_S * SAMPLE_RATE)
        out: list[tuple[int, int]] = []
        for start in range(0, max(n, 0), hop):
            real = min(CLIP_SAMPLES, n - start)
            if real == CLIP_SAMPLES:
                out.append((start, real))
                continue
            if not out or real >= min_partial:
                out.append((start, real))
            break  # windows after the first partial one hold less of the same audio
        return out

    def start_s(self, first_sample: int) -> float:
        """Second of the file where a window that starts at ``first_sample`` of the span begins."""
        return round(self.offset_s + first_sample / SAMPLE_RATE, 6)

    def metadata(self) -> dict[str, str]:
        """The rule as Parquet key-value metadata (``clap.window.*``)."""
        return {
            "clap.window.window_s": str(CLIP_SECONDS),
            "clap.window.offset_s": repr(float(self.offset_s)),
            "clap.window.hop_s": repr(self.hop),
            "clap.window.max_audio_s": "none"
            if self.max_audio_s is None
            else repr(float(self.max_audio_s)),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | dict[str, str] | None) -> WindowRule:
        """The rule :meth:`metadata` wrote (ValueError naming the key when it is absent)."""
        meta = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (metadata or {}).items()
        }
        try:
            window = int(meta["clap.window.window_s"])
            max_audio = meta["clap.window.max_audio_s"]
            rule = cls(
                offset_s=float(meta["clap.window.offset_s"]),
                hop_s=float(meta["clap.window.hop_s"]),
                max_audio_s=None if max_audio == "none" else float(max_audio),
            )
        except KeyError as exc:
            raise ValueError(f"no window rule in the metadata: {exc.args[0]} missing") from None
        if window != CLIP_SECONDS:
            raise ValueError(f"windows of {window} s, but a window is {CLIP_SECONDS} s here")
        return rule


def cut_windows(samples: np.ndarray, rule: WindowRule) -> tuple[list[float], list[np.ndarray]]:
    """(start seconds, real samples) of each window of a decoded span (views, not padded)."""
    spans = rule.spans(len(samples))
    return (
        [rule.start_s(first) for first, _ in spans],
        [samples[first : first + real] for first, real in spans],
    )


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples as little-endian 16-bit PCM (rounded, clipped), as ffmpeg's ``s16``."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * np.float32(PCM_SCALE))
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def from_pcm16(pcm: bytes | memoryview | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """16-bit PCM back to float32, zero-padded to ``CLIP_SAMPLES`` (into ``out`` when given)."""
    values = pcm if isinstance(pcm, np.ndarray) else np.frombuffer(pcm, dtype="<i2")
    if values.size > CLIP_SAMPLES:
        raise ValueError(f"{values.size} samples are more than a window ({CLIP_SAMPLES})")
    if out is None:
        out = np.empty(CLIP_SAMPLES, dtype=np.float32)
    np.multiply(values, np.float32(1 / PCM_SCALE), out=out[: values.size], casting="unsafe")
    out[values.size :] = 0.0
    return out
