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
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

PADDINGS = ("repeatpad", "repeat", "pad")
MEL_FLOOR = 1e-10  # the extractor's mel_floor and power_to_db min_value (-100 dB)

WaveBatch = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


class LogMelFeatures(nn.Module):
    """Batched torch equivalent of ``ClapFeatureExtractor`` (rand_trunc) -> ``input_features``.

    ``forward(waveforms)`` takes 48 kHz mono float waveforms: a ``(B, T)`` tensor or
    array, or a list of 1-D clips of any lengths, and returns ``(B, 1, 1001, 64)``
    float32 on the module's device (inputs elsewhere are moved there).
    """

    window: torch.Tensor
    mel_filters: torch.Tensor

    def __init__(self, feature_extractor, *, seed: int | None = None) -> None:
        super().__init__()
        fe = feature_extractor
        truncation = getattr(fe, "truncation", "rand_trunc")
        if truncation != "rand_trunc":
            raise ValueError(
                f"LogMelFeatures supports truncation='rand_trunc' (the unfused CLAP), the feature "
                f"extractor has truncation={truncation!r}: 'fusion' makes 4-channel features the "
                "unfused model rejects. Build it with clap_pipeline.model.unfused_feature_extractor() "
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
        windows = self.fit_to_window(clips, offsets=offsets, generator=generator)
        return self.log_mel(windows)

    def fit_to_window(
        self,
        clips: Sequence[torch.Tensor],
        *,
        offsets: Sequence[int | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pad (repeatpad/repeat/pad) or crop (rand_trunc) 1-D clips to ``(B, max_samples)``."""
        if offsets is not None and len(offsets) != len(clips):
            raise ValueError(f"offsets has {len(offsets)} entries for {len(clips)} clips")
        n = self.max_samples
        lengths = [int(c.shape[0]) for c in clips]
        if len(set(lengths)) == 1 and lengths[0] <= n and offsets is None:
            # Common case (every stored clip is 240,000 samples): one batched op.
            batch = torch.stack(list(clips)) if not isinstance(clips, torch.Tensor) else clips
            return self._pad_batch(batch)
        rows = []
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
                rows.append(clip[start : start + n])
            else:
                rows.append(self._pad_batch(clip[None])[0])
        return torch.stack(rows)

    def log_mel(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, max_samples)`` -> ``(B, 1, frames, n_mels)`` dB (float32, autocast off)."""
        with _autocast_off(self.window.device):
            windows = windows.to(self.window.device, torch.float32)
            spec = torch.stft(
                windows,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )  # (B, n_fft // 2 + 1, frames)
            band = spec[:, self.first_bin : self.first_bin + self.mel_filters.shape[0]]
            power = band.real.square() + band.imag.square()
            mel = power.transpose(1, 2) @ self.mel_filters  # (B, frames, n_mels)
            return (10.0 * torch.log10(mel.clamp_min(MEL_FLOOR))).unsqueeze(1)

    # ------------------------------------------------------------------ helpers

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

    def _pad_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` with ``L <= max_samples`` -> ``(B, max_samples)``, as the extractor pads."""
        n, length = self.max_samples, batch.shape[1]
        if length == n:
            return batch
        if self.padding == "repeatpad":
            batch = batch.repeat(1, n // length)  # whole copies only, like np.tile(x, n // L)
        elif self.padding == "repeat":
            batch = batch.repeat(1, n // length + 1)[:, :n]
        return nn.functional.pad(batch, (0, n - batch.shape[1]))

    def _random_offset(self, overflow: int, generator: torch.Generator | None) -> int:
        gen = generator if generator is not None else self.generator
        return int(torch.randint(0, overflow + 1, (1,), generator=gen).item())


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
