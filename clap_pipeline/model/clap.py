"""Load CLAP (hub id, local folder or registered checkpoint), embed texts and clips, save checkpoints.

The same ``from_pretrained`` path serves ``laion/clap-htsat-unfused``, the tiny model
saved by ``clap-pipeline tiny-model`` (``model/tiny.py``) and the checkpoints training
writes with :func:`save_checkpoint`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

from clap_pipeline.config import hf_hub_offline
from clap_pipeline.knobs import DEVICE
from clap_pipeline.processes import fix_mmap_threshold
from clap_pipeline.storage import atomic_path

TEXT_MAX_LENGTH = 77  # CLAP's RoBERTa text tower was trained on 77 tokens


class ModelLoadError(RuntimeError):
    """CLAP_MODEL could not be loaded; the message says what to change."""


@dataclass
class LoadedClap:
    model: ClapModel
    processor: ClapProcessor
    source: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def feature_extractor(self) -> ClapFeatureExtractor:
        return self.processor.feature_extractor


def load_clap(source: str | Path) -> LoadedClap:
    """``ClapModel`` + ``ClapProcessor`` from a hub id or a local ``save_pretrained`` folder.

    A process that loads a CLAP streams clips through it: its large buffers get their
    own mmaps from here on, which keeps its RSS flat in the number of clips.
    """
    fix_mmap_threshold()
    source = str(source)
    try:
        model = ClapModel.from_pretrained(source)
        processor = ClapProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        offline = hf_hub_offline()
        hint = (
            f"cannot load CLAP model {source!r} (setting CLAP_MODEL): {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. "
        )
        if Path(source).exists():
            hint += "The folder exists but is not a save_pretrained CLAP model folder. "
        elif offline:
            hint += "HF_HUB_OFFLINE=1 is set and the model is not in the local cache. "
        else:
            hint += "Check the hub id or path, or the network (HF_HUB_OFFLINE). "
        hint += "For an offline run: `clap-pipeline tiny-model data/models/tiny-clap` and CLAP_MODEL=data/models/tiny-clap."
        raise ModelLoadError(hint) from exc
    return LoadedClap(model=model, processor=processor, source=source)


def unfused_feature_extractor() -> ClapFeatureExtractor:
    """The hub `clap-htsat-unfused` preprocessor settings (the class defaults differ: fusion, fmin 0)."""
    return ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48_000,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        padding_value=0.0,
        return_attention_mask=False,
        frequency_min=50,
        frequency_max=14_000,
        top_db=None,
        truncation="rand_trunc",
        padding="repeatpad",
    )


def save_checkpoint(model: ClapModel, processor: ClapProcessor, target: Path) -> Path:
    """Write ``model`` and ``processor`` as one ``save_pretrained`` folder, atomically."""
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return target.resolve()


def pick_device(preferred: str = DEVICE.default) -> torch.device:
    """CUDA when present, else MPS, else CPU (``preferred`` forces one)."""
    if preferred != DEVICE.default:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tokenize(
    tokenizer, texts: list[str], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Tokenize with the tokenizer alone: the processor would leak padding/truncation to audio."""
    enc = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=TEXT_MAX_LENGTH,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def text_embeddings(model: ClapModel, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised text embeddings (B, d)."""
    out = model.get_text_features(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
    )
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.nn.functional.normalize(emb, dim=-1)


def audio_embeddings(model: ClapModel, input_features: torch.Tensor) -> torch.Tensor:
    """L2-normalised audio embeddings (B, d) from (B, 1, 1001, 64) log-mel features."""
    out = model.get_audio_features(input_features=input_features)
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.nn.functional.normalize(emb, dim=-1)


def clip_embeddings(
    model: torch.nn.Module, features: torch.nn.Module, waveforms: np.ndarray, device: torch.device
) -> np.ndarray:
    """L2-normalised fp32 audio embeddings (B, d) of a (B, 240000) waveform batch.

    ``features`` is a ``LogMelFeatures`` on ``device``; call under ``torch.inference_mode()``.
    """
    waves = torch.from_numpy(np.ascontiguousarray(waveforms)).to(device)
    return audio_embeddings(model, features(waves)).float().cpu().numpy()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Names a model's weights (sha256 of every tensor's name, dtype, shape and bytes; 16 hex).

    The key of its window embeddings (``window_embeddings.py``): equal weights, equal key,
    whether they came from the hub, a folder or the registry.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
