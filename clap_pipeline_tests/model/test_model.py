from pathlib import Path

import numpy as np
import pytest
import torch

from clap_pipeline.model.clap import (
    ModelLoadError,
    audio_embeddings,
    load_clap,
    model_fingerprint,
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
    # Music words are single BPE tokens: <s> Ġfolk Ġcountry Ġmusic </s>; "a" is padded with <pad>=1.
    assert tokens["input_ids"].shape == (2, 5)
    assert tokens["input_ids"][1, 3:].eq(1).all()
    # Lower-cased, and a word is one token wherever it stands (prefix space).
    tok = clap.tokenizer
    assert tok("Hip-Hop music")["input_ids"] == tok("hip-hop MUSIC")["input_ids"]
    assert tok("hip-hop")["input_ids"][1:-1] == tok("Genre: Hip-Hop")["input_ids"][3:-1]
    # Byte-level: any text encodes without <unk>, unicode included (lower-cased).
    odd = tok("Ölüdeniz — 東京 ✓")["input_ids"]
    assert tok.unk_token_id not in odd
    assert tok.decode(odd, skip_special_tokens=True).strip() == "ölüdeniz — 東京 ✓"
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


def test_model_fingerprint_follows_the_weights(tiny_model_dir: Path) -> None:
    a, b = load_clap(tiny_model_dir).model, load_clap(tiny_model_dir).model
    assert model_fingerprint(a) == model_fingerprint(b)  # same weights, two loads
    with torch.no_grad():
        next(b.audio_model.parameters()).add_(1e-3)
    assert model_fingerprint(a) != model_fingerprint(b)
