"""Batched, no-grad fp32 embeddings of one CLAP at a time (the torch side of evaluation).

Each model is loaded, encodes every split's prompts plus the named extra texts (genre
prompts, genre-search queries), reads every window of the splits' tracks from the window
embeddings (``model/embed_windows.py`` embeds what the store lacks, once per model), and
is released before the next one loads: memory = one model, one batch of waveforms and the
windows' embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clap_pipeline.evaluation.inputs import EvaluationError, SplitClips
from clap_pipeline.model.clap import (
    ModelLoadError,
    clip_embeddings,
    load_clap,
    text_embeddings,
    tokenize,
)
from clap_pipeline.model.embed_windows import embed_windows
from clap_pipeline.model.features import features_for_model
from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log
from clap_pipeline.waveform_reader import WaveformIndex, ordered_batches
from clap_pipeline.window_embeddings import WindowEmbeddings, read_store


class ClapEncoder:
    """Batched, no-grad fp32 text and audio embeddings of one loaded CLAP."""

    def __init__(self, source: str, device: torch.device):
        try:
            loaded = load_clap(source)
        except ModelLoadError as exc:
            raise EvaluationError(str(exc)) from exc
        self.device = device
        self.loaded = loaded
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
        del self.model, self.features, self.loaded
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Embedded:
    """One model's embeddings: per split (prompts, every window, each track's first window)
    and per named group of texts."""

    source: str
    text: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, d) prompts
    audio: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, d) first windows
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # group name -> (G, d)
    windows: dict[str, WindowEmbeddings] = field(default_factory=dict)  # split -> all windows


def embed_model(
    source: str,
    label: str,
    clips: Mapping[str, SplitClips],
    stores: tuple[Path, Path],
    text_groups: Mapping[str, Sequence[str]],
    device: torch.device,
    batch_size: int,
    log: Log | None,
) -> Embedded:
    """Load ``source``, embed every non-empty split's prompts and each group of texts, read
    the splits' window embeddings from the store (``stores`` = (waveforms dir, window
    embeddings dir); what it lacks is embedded into it), release the model."""
    waveforms_dir, store_dir = stores
    encoder = ClapEncoder(source, device)
    out = Embedded(source=source)
    wanted = sorted({t for split in clips.values() for t in split.track_ids})
    if wanted:
        done = embed_windows(
            encoder.loaded, waveforms_dir, store_dir, track_ids=wanted, batch_size=batch_size,
            device=str(device), log=(lambda m: log(f"{label}: {m}")) if log else None,
        )  # fmt: skip
        windows = read_store(store_dir, done.fingerprint, wanted)
    for name, split in clips.items():
        if not split.track_ids:
            continue
        out.text[name] = encoder.texts(split.prompts, batch_size)
        out.windows[name] = windows.subset(split.track_ids)
        if out.windows[name].tracks.tolist() != list(split.track_ids):
            raise EvaluationError(f"{name}: window embeddings of other tracks than the split's")
        out.audio[name] = out.windows[name].track_vectors("first")
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
