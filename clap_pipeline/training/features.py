"""A clip's log-mel features kept across epochs (``model/features.py`` computes them)."""

from __future__ import annotations

import torch

from clap_pipeline.training.data import ClipBatch


class CachedFeatures:
    """Log-mel features by window, computed once and kept on the CPU within a budget.

    A stored clip no longer than the 10-s window is tiled, never randomly cropped, so its
    features are a pure function of its samples: reusing them in later epochs changes no
    number and saves the STFT of every clip after the first epoch.

    ``keep_new = False`` serves what is stored but stores nothing more: the training loop
    sets it for the last epoch, whose clips no later epoch reads (a 1-epoch run on 25,000
    tracks would otherwise fill the whole budget for nothing).
    """

    def __init__(self, features: torch.nn.Module, budget_mb: int) -> None:
        self.features = features
        self.budget_bytes = budget_mb * 2**20
        self.store: dict[object, torch.Tensor] = {}
        self.bytes = 0
        self.keep_new = True

    def __call__(self, batch: ClipBatch, device: torch.device) -> torch.Tensor:
        # A window's key: its WaveformIndex position (a track trains on several windows);
        # a batch without positions is keyed by track, apart from them.
        ids: list[object] = (
            [("track", int(t)) for t in batch.track_ids]
            if batch.windows is None
            else [int(p) for p in batch.windows]
        )
        missing = [i for i, t in enumerate(ids) if t not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            waves = torch.from_numpy(batch.waveforms[missing]).to(device, non_blocking=True)
            with torch.no_grad():
                computed = self.features(waves)
            cacheable = waves.shape[-1] <= getattr(self.features, "max_samples", 0)
            for j, i in enumerate(missing):
                fresh[i] = computed[j]
                size = computed[j].numel() * computed[j].element_size()
                if cacheable and self.keep_new and self.bytes + size <= self.budget_bytes:
                    self.store[ids[i]] = computed[j].to("cpu", copy=True)
                    self.bytes += size
            if len(missing) == len(ids):
                return computed
        return torch.stack(
            [fresh[i] if i in fresh else self.store[t].to(device) for i, t in enumerate(ids)]
        )
