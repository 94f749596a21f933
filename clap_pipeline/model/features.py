"""CLAP log-mel features in torch, batched, on any device.

``LogMelFeatures(feature_extractor)`` reproduces ``ClapFeatureExtractor`` for the
unfused model (``truncation="rand_trunc"``, ``padding="repeatpad"``) without its
per-clip numpy loop, so the training loop can compute features on the training
device every step instead of caching them or running numpy per clip per epoch.

What the extractor does, and what this module mirrors (transformers 5.x):

* Clip length ``L`` vs the window ``max_samples`` (10 s = 480,000 at 48 kHz):
  - ``L < max_samples`` and ``padding="repeatpad"``: the clip is tiled
    ``max_samples // L`` whole times, then zero-padded to ``max_samples``.
    It tiles the array it is *given*: a stored 5-s waveform whose real audio is
    shorter (``n_samples_decoded`` < 240,000) is tiled with its trailing zeros.
    Pass ``lengths`` to tile only the first ``lengths[i]`` samples instead (the
    same as giving the extractor ``wave[:lengths[i]]``).
  - ``L > max_samples`` (``rand_trunc``): a random window of ``max_samples``
    starting at ``randint(0, L - max_samples)`` (inclusive). The extractor draws
    from numpy's global RNG; here the offset comes from a ``torch.Generator``
    (the ``generator`` argument, else the module's own seeded generator when it
    was built with ``seed=``, else torch's global RNG, seeded by
    ``torch.manual_seed``), or is given explicitly with ``offsets``.
  - ``L == max_samples``: used as is.
* STFT: periodic Hann window of ``fft_window_size`` (1024), hop 480,
  ``center=True`` with reflect padding -> power ``|X|^2`` -> Slaney mel
  filterbank (``feature_extractor.mel_filters_slaney``, built from the
  extractor's ``frequency_min``/``frequency_max``) -> ``max(., 1e-10)`` ->
  ``10 * log10``. The extractor never applies ``top_db`` (it does not pass it to
  its spectrogram), so neither does this module.
* Output ``(B, 1, frames, feature_size)`` = ``(B, 1, 1001, 64)`` float32.

Always computed in float32 with autocast disabled, so bf16 autocast around the
training step does not degrade the features.

Speed: the tiling, zero padding and STFT reflect padding are written into one
buffer, and when every clip of a batch has the same length (our stored 5-s
clips), frames that recur with the tile period are computed once and copied
(504 of 1001 frames for a clip tiled twice); results agree with the full
computation to float rounding. Benchmark: ``benchmarks/bench_train.py``.

``training/features.py`` ``CachedFeatures`` keeps a clip's features across epochs (they
are a pure function of its samples).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

PADDINGS = ("repeatpad", "repeat", "pad")
MEL_FLOOR = 1e-10  # the extractor's mel_floor and power_to_db min_value (-100 dB)

WaveBatch = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


@dataclass(frozen=True)
class _FramePlan:
    n_computed: int
    runs: tuple[tuple[int, int, int], ...]  # (first frame, stop frame, position among computed)
    source: torch.Tensor  # for each output frame, its position among the computed frames


class LogMelFeatures(nn.Module):
    """Batched torch equivalent of ``ClapFeatureExtractor`` (rand_trunc) -> ``input_features``.

    ``forward(waveforms)`` takes 48 kHz mono float waveforms: a ``(B, T)`` tensor or
    array, or a list of 1-D clips of any lengths, and returns ``(B, 1, 1001, 64)``
    float32 on the module's device (inputs elsewhere are moved there).
    """

    window: torch.Tensor
    mel_filters: torch.Tensor  # (used frequency bins, n_mels)
    mel_interleaved: torch.Tensor  # each row twice, for interleaved (re, im) squares

    def __init__(self, feature_extractor, *, seed: int | None = None) -> None:
        super().__init__()
        fe = feature_extractor
        truncation = getattr(fe, "truncation", "rand_trunc")
        if truncation != "rand_trunc":
            raise ValueError(
                f"LogMelFeatures supports truncation='rand_trunc' (the unfused CLAP), the feature "
                f"extractor has truncation={truncation!r}: 'fusion' makes 4-channel features the "
                "unfused model rejects. Build it with clap_pipeline.model.clap.unfused_feature_extractor() "
                "or load the model's own processor."
            )
        padding = getattr(fe, "padding", "repeatpad")
        if padding not in PADDINGS:
            raise ValueError(f"feature extractor padding {padding!r} is not one of {PADDINGS}")
        self.padding = padding
        self.sampling_rate = int(fe.sampling_rate)
        self.n_fft = int(fe.fft_window_size)
        self.hop_length = int(fe.hop_length)
        self.max_samples = int(fe.nb_max_samples)
        self.n_mels = int(fe.feature_size)
        self.n_frames = self.max_samples // self.hop_length + 1  # center=True

        from transformers.audio_utils import window_function

        # The extractor's own window (periodic Hann), so both use the same coefficients.
        window = torch.from_numpy(np.asarray(window_function(self.n_fft, "hann"), dtype=np.float64))
        mel = np.asarray(fe.mel_filters_slaney, dtype=np.float64)  # (n_fft // 2 + 1, n_mels)
        if mel.shape != (self.n_fft // 2 + 1, self.n_mels):
            raise ValueError(
                f"mel_filters_slaney has shape {mel.shape}, expected {(self.n_fft // 2 + 1, self.n_mels)}"
            )
        # Frequency bins outside [frequency_min, frequency_max] have all-zero weights:
        # keep only the used band (bins 2..298 of 513 for the hub settings), a smaller matmul.
        used = np.flatnonzero(np.any(mel != 0, axis=1))
        self.first_bin = int(used[0]) if len(used) else 0
        last_bin = int(used[-1]) + 1 if len(used) else 1
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer(
            "mel_filters",
            torch.from_numpy(mel[self.first_bin : last_bin]).float(),
            persistent=False,
        )
        self.register_buffer(
            "mel_interleaved", self.mel_filters.repeat_interleave(2, dim=0), persistent=False
        )
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    def extra_repr(self) -> str:
        return (
            f"sampling_rate={self.sampling_rate}, max_samples={self.max_samples}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, n_mels={self.n_mels}, padding={self.padding!r}"
        )

    # ------------------------------------------------------------------ public

    def forward(
        self,
        waveforms: WaveBatch,
        lengths: Sequence[int] | torch.Tensor | np.ndarray | None = None,
        *,
        offsets: Sequence[int | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, 1, 1001, 64)`` log-mel features (dB, float32).

        ``lengths[i]``: clip i is ``waveforms[i, :lengths[i]]`` (default: whole rows).
        ``offsets[i]``: start of the 10-s window for a clip longer than 10 s
        (default: drawn at random, see the module docstring); ignored for shorter clips.
        """
        clips = self._clips(waveforms, lengths)
        padded = self._centered_windows(clips, offsets=offsets, generator=generator)
        clip_lengths = {int(clip.shape[0]) for clip in clips}
        repeat_length = clip_lengths.pop() if len(clip_lengths) == 1 else None
        return self._log_mel_centered(padded, repeat_length)

    def fit_to_window(
        self,
        clips: Sequence[torch.Tensor],
        *,
        offsets: Sequence[int | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pad (repeatpad/repeat/pad) or crop (rand_trunc) 1-D clips to ``(B, max_samples)``."""
        half = self.n_fft // 2
        padded = self._centered_windows(clips, offsets=offsets, generator=generator)
        return padded[:, half : half + self.max_samples]

    def log_mel(self, windows: torch.Tensor, repeat_length: int | None = None) -> torch.Tensor:
        """``(B, max_samples)`` windows -> ``(B, 1, frames, n_mels)`` dB (float32, autocast off).

        ``repeat_length``: every row is a clip of that many samples padded as
        ``fit_to_window`` does, which lets repeated frames be computed once.
        """
        half = self.n_fft // 2
        windows = windows.to(self.window.device, torch.float32)
        padded = windows.new_empty(windows.shape[0], self.max_samples + 2 * half)
        padded[:, half : half + self.max_samples] = windows
        return self._log_mel_centered(self._reflect_edges(padded), repeat_length)

    def _centered_windows(
        self,
        clips: Sequence[torch.Tensor],
        *,
        offsets: Sequence[int | None] | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``(B, n_fft/2 + max_samples + n_fft/2)``: the windows with stft's reflect padding.

        Written in one buffer (no separate tile, pad and reflect-pad copies): these
        are memory-bound passes over ~2 MB per clip.
        """
        if offsets is not None and len(offsets) != len(clips):
            raise ValueError(f"offsets has {len(offsets)} entries for {len(clips)} clips")
        n, half = self.max_samples, self.n_fft // 2
        lengths = [int(c.shape[0]) for c in clips]
        padded = clips[0].new_empty(len(clips), n + 2 * half)
        windows = padded[:, half : half + n]
        if len(set(lengths)) == 1 and lengths[0] <= n:
            # Common case (every stored clip is 240,000 samples): batched copies.
            batch = clips if isinstance(clips, torch.Tensor) else torch.stack(list(clips))
            self._fill_windows(windows, batch)
            return self._reflect_edges(padded)
        for i, clip in enumerate(clips):
            length = lengths[i]
            if length > n:
                start = offsets[i] if offsets is not None else None
                if start is None:
                    start = self._random_offset(length - n, generator)
                if not 0 <= start <= length - n:
                    raise ValueError(
                        f"offsets[{i}]={start} is outside [0, {length - n}] for a clip of {length} samples"
                    )
                windows[i] = clip[start : start + n]
            else:
                self._fill_windows(windows[i : i + 1], clip[None])
        return self._reflect_edges(padded)

    def _fill_windows(self, windows: torch.Tensor, batch: torch.Tensor) -> None:
        """Write ``(B, L)`` clips, ``L <= max_samples``, into ``(B, max_samples)`` as the extractor pads."""
        n, length = self.max_samples, batch.shape[1]
        if length == n:
            windows.copy_(batch)
            return
        if self.padding == "pad":
            tiles, tail = 1, 0
        elif self.padding == "repeatpad":
            tiles, tail = n // length, 0  # whole copies only, like np.tile(x, n // L), then zeros
        else:  # "repeat": tiles cut at max_samples
            tiles, tail = n // length, n % length
        body = tiles * length
        windows[:, :body].unflatten(1, (tiles, length)).copy_(batch[:, None])
        windows[:, body : body + tail] = batch[:, :tail]
        windows[:, body + tail :] = 0.0

    def _reflect_edges(self, padded: torch.Tensor) -> torch.Tensor:
        """Fill the n_fft/2 margins as ``torch.stft(center=True, pad_mode="reflect")`` does."""
        n, half = self.max_samples, self.n_fft // 2
        padded[:, :half] = padded[:, half + 1 : 2 * half + 1].flip(-1)
        padded[:, half + n :] = padded[:, n - 1 : n - 1 + half].flip(-1)
        return padded

    def _log_mel_centered(self, padded: torch.Tensor, repeat_length: int | None) -> torch.Tensor:
        """Reflect-padded windows -> ``(B, 1, frames, n_mels)``.

        Frames that lie wholly inside the tiled part of a repeat-padded clip repeat
        with the clip's period: only one period of them is computed and the rest
        copied (a stored 5-s clip tiled twice: 504 of 1001 frames).
        """
        plan = None
        if repeat_length is not None and repeat_length < self.max_samples:
            plan = self._repeat_plan(repeat_length)
        with _autocast_off(self.window.device):
            padded = padded.to(self.window.device, torch.float32)
            frames = padded.unfold(-1, self.n_fft, self.hop_length)  # (B, frames, n_fft) view
            if plan is None:
                windowed = frames * self.window
            else:
                # The computed frames are a few contiguous runs: slice them (no gather).
                windowed = frames.new_empty(frames.shape[0], plan.n_computed, self.n_fft)
                for start, stop, at in plan.runs:
                    torch.mul(
                        frames[:, start:stop], self.window, out=windowed[:, at : at + stop - start]
                    )
            spec = torch.fft.rfft(windowed)  # (B, frames, n_fft // 2 + 1) complex
            del windowed
            # |X|^2 @ mel without abs/copies: square re and im in place (interleaved, as
            # view_as_real lays them out) and use a filterbank with each row repeated twice.
            re_im = torch.view_as_real(spec).flatten(-2)  # (B, frames, 2 * (n_fft // 2 + 1))
            band = re_im[
                ..., 2 * self.first_bin : 2 * self.first_bin + self.mel_interleaved.shape[0]
            ]
            mel = band.square_() @ self.mel_interleaved  # (B, frames, n_mels)
            del spec, re_im, band
            log_mel = mel.clamp_min_(MEL_FLOOR).log10_().mul_(10.0)
            if plan is not None:
                log_mel = log_mel[:, plan.source.to(log_mel.device)]
            return log_mel.unsqueeze(1)

    def _repeat_plan(self, length: int) -> _FramePlan | None:
        if self.padding == "repeatpad":
            tiled = (self.max_samples // length) * length
        elif self.padding == "repeat":
            tiled = self.max_samples
        else:
            return None
        plan = repeat_frame_plan(length, tiled, self.n_fft, self.hop_length, self.n_frames)
        if plan is None:
            return None
        computed, source = plan
        runs: list[list[int]] = []  # [first frame, stop frame, position among computed]
        for at, frame in enumerate(computed):
            if runs and runs[-1][1] == frame:
                runs[-1][1] += 1
            else:
                runs.append([frame, frame + 1, at])
        return _FramePlan(
            n_computed=len(computed),
            runs=tuple((a, b, o) for a, b, o in runs),
            source=torch.tensor(source),
        )

    def _clips(
        self, waveforms: WaveBatch, lengths: Sequence[int] | torch.Tensor | np.ndarray | None
    ) -> Sequence[torch.Tensor]:
        device = self.window.device
        if isinstance(waveforms, (torch.Tensor, np.ndarray)):
            batch = torch.as_tensor(waveforms)
            if batch.ndim == 1:
                batch = batch[None]
            if batch.ndim != 2:
                raise ValueError(
                    f"waveforms must be (batch, samples) mono audio, got shape {tuple(batch.shape)}"
                )
            if batch.shape[0] == 0:
                raise ValueError("waveforms is an empty batch")
            batch = batch.to(device, torch.float32)
            clips: Sequence[torch.Tensor] = batch
        else:
            clips = []
            for i, clip in enumerate(waveforms):
                t = torch.as_tensor(clip)
                if t.ndim != 1:
                    raise ValueError(
                        f"waveforms[{i}] must be a 1-D mono clip, got shape {tuple(t.shape)}"
                    )
                clips.append(t.to(device, torch.float32))
            if not clips:
                raise ValueError("waveforms is an empty batch")
        if lengths is not None:
            lengths = [int(x) for x in torch.as_tensor(lengths).reshape(-1).tolist()]
            if len(lengths) != len(clips):
                raise ValueError(f"lengths has {len(lengths)} entries for {len(clips)} clips")
            for i, (clip, length) in enumerate(zip(clips, lengths, strict=True)):
                if not 0 < length <= clip.shape[0]:
                    raise ValueError(
                        f"lengths[{i}]={length} is outside [1, {clip.shape[0]}] (clip {i} has "
                        f"{clip.shape[0]} samples)"
                    )
            if any(length != clip.shape[0] for clip, length in zip(clips, lengths, strict=True)):
                clips = [clip[:length] for clip, length in zip(clips, lengths, strict=True)]
        for i, clip in enumerate(clips):
            if clip.shape[0] == 0:
                raise ValueError(f"waveforms[{i}] is empty (0 samples)")
        return clips

    def _random_offset(self, overflow: int, generator: torch.Generator | None) -> int:
        gen = generator if generator is not None else self.generator
        return int(torch.randint(0, overflow + 1, (1,), generator=gen).item())


@functools.lru_cache(maxsize=64)
def repeat_frame_plan(
    length: int, tiled: int, n_fft: int, hop: int, n_frames: int
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(frames to compute, index of each output frame among them), or None if all differ.

    The window is a clip of ``length`` samples tiled over its first ``tiled``
    samples. Centred frame k reads samples [k*hop - n_fft/2, k*hop + n_fft/2); when
    that span lies inside the tiled part, its content depends only on
    k*hop mod length, so frames ``length / gcd(length, hop)`` apart are equal.
    """
    half = n_fft // 2
    period = length // math.gcd(length, hop)
    first = -(-half // hop)  # first frame clear of the reflect padding
    last = min((tiled - n_fft + half) // hop, n_frames - 1)  # last frame inside the tiles
    source = list(range(n_frames))
    for k in range(first, last + 1):
        source[k] = first + (k - first) % period
    computed = sorted(set(source))
    if len(computed) == n_frames:
        return None
    position = {frame: i for i, frame in enumerate(computed)}
    return tuple(computed), tuple(position[k] for k in source)


def _autocast_off(device: torch.device) -> contextlib.ExitStack:
    """Autocast disabled on the CPU and on ``device``'s type, whatever the caller enabled."""
    stack = contextlib.ExitStack()
    for device_type in dict.fromkeys(("cpu", device.type)):
        # A device type without autocast support has nothing to turn off.
        with contextlib.suppress(RuntimeError, ValueError):
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def features_for_model(loaded_clap, device: torch.device | str = "cpu", **kwargs) -> LogMelFeatures:
    """``LogMelFeatures`` for a ``LoadedClap`` (its own processor's extractor), on ``device``, eval mode."""
    return LogMelFeatures(loaded_clap.feature_extractor, **kwargs).to(device).eval()
