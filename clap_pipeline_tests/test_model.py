from pathlib import Path

import numpy as np
import pytest
import torch

from clap_pipeline.model import (
    ModelLoadError,
    audio_embeddings,
    load_clap,
    text_embeddings,
    tokenize,
)


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir: Path) -> None:
    clap = load_clap(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").exists()
    fe = clap.feature_extractor
    assert (fe.truncation, fe.padding, fe.frequency_min) == ("rand_trunc", "repeatpad", 50)
    wave = np.random.default_rng(0).standard_normal(240_000).astype(np.float32) * 0.1
    feats = fe([wave, wave], sampling_rate=48_000, return_tensors="pt")["input_features"]
    assert tuple(feats.shape) == (2, 1, 1001, 64)
    tokens = tokenize(clap.tokenizer, ["folk country music", "a"])
    # Music words are single BPE tokens: <s> folk Ġcountry Ġmusic </s>; "a" is padded with <pad>=1.
    assert tokens["input_ids"].shape == (2, 5)
    assert tokens["input_ids"][1, 3:].eq(1).all()
    # Byte-level: any text encodes without <unk>, unicode included.
    odd = clap.tokenizer("Ölüdeniz — 東京 ✓")["input_ids"]
    assert clap.tokenizer.unk_token_id not in odd
    assert clap.tokenizer.decode(odd, skip_special_tokens=True) == "Ölüdeniz — 東京 ✓"
    with torch.no_grad():
        t = text_embeddings(clap.model, tokens)
        a = audio_embeddings(clap.model, feats)
    assert t.shape == a.shape == (2, 32)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_unloadable_model_names_setting_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_clap(tmp_path / "missing-model")
    message = str(err.value)
    assert "CLAP_MODEL" in message and "tiny-model" in message
