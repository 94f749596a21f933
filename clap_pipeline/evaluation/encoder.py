"""Batched, no-grad fp32 embeddings of one CLAP at a time (the torch side of evaluation).

Each model is loaded, encodes every split's prompts and clips plus the named extra texts
(genre prompts, genre-search queries), and is released before the next one loads:
memory = one model, one batch of waveforms and the N x d embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from clap_pipeline.dataset import WaveformIndex, ordered_batches
from clap_pipeline.evaluation.inputs import EvaluationError, SplitClips
from clap_pipeline.model.clap import (
    ModelLoadError,
    clip_embeddings,
    load_clap,
    text_embeddings,
    tokenize,
)
from clap_pipeline.model.features import features_for_model
from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log


class ClapEncoder:
    """Batched, no-grad fp32 text and audio embeddings of one loaded CLAP."""

    def __init__(self, source: str, device: torch.device):
        try:
            loaded = load_clap(source)
        except ModelLoadError as exc:
            raise EvaluationError(str(exc)) from exc
        self.device = device
        self.model = loaded.model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.features = features_for_model(loaded, device)

    def texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                tokens = tokenize(self.tokenizer, chunk, self.device)
                out.append(text_embeddings(self.model, tokens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def clips(
        self,
        batches: Iterator[tuple[np.ndarray, np.ndarray]],
        expected_ids: Sequence[int],
        progress: ProgressLog | None = None,
    ) -> np.ndarray:
        out, seen = [], []
        with torch.inference_mode():
            for ids, waves in batches:
                out.append(clip_embeddings(self.model, self.features, waves, self.device))
                seen.extend(int(t) for t in ids)
                if progress:
                    progress.update(len(seen))
        if seen != list(expected_ids):  # the pairing of text i with clip i depends on it
            raise EvaluationError("waveform batches came back in an unexpected order")
        return np.concatenate(out)

    def release(self) -> None:
        """Drop the model; on CUDA return its memory before the next one loads."""
        del self.model, self.features
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Embedded:
    """One model's embeddings: per split (prompts, clips) and per named group of texts."""

    source: str
    text: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, d) prompts
    audio: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, d) clips
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # group name -> (G, d)


def embed_model(
    source: str,
    label: str,
    clips: Mapping[str, SplitClips],
    index: WaveformIndex,
    text_groups: Mapping[str, Sequence[str]],
    device: torch.device,
    batch_size: int,
    log: Log | None,
) -> Embedded:
    """Load ``source``, embed every non-empty split and each group of texts, release it."""
    encoder = ClapEncoder(source, device)
    out = Embedded(source=source)
    for name, split in clips.items():
        if not split.track_ids:
            continue
        progress = ProgressLog(f"{label} {name}", len(split.track_ids), log, every_s=15.0)
        out.text[name] = encoder.texts(split.prompts, batch_size)
        out.audio[name] = encoder.clips(
            ordered_batches(index, split.track_ids, batch_size), split.track_ids, progress
        )
    for group, texts in text_groups.items():
        out.groups[group] = encoder.texts(texts, batch_size)
    encoder.release()
    return out


def embed_first_clips(
    source: str,
    split: SplitClips,
    n_clips: int,
    index: WaveformIndex,
    device: torch.device,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(all the split's prompts, its first ``n_clips`` clips) embedded by one checkpoint."""
    encoder = ClapEncoder(source, device)
    first_ids = split.track_ids[:n_clips]
    text = encoder.texts(split.prompts, batch_size)
    audio = encoder.clips(ordered_batches(index, first_ids, batch_size), first_ids)
    encoder.release()
    return text, audio
