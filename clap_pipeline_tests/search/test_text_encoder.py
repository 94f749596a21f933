"""The service's ONNX Runtime int8 query encoder against the fp32 PyTorch model it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clap_pipeline.search.query import top_k
from clap_pipeline.search.text_encoder import build_encoder, onnx_model_path
from clap_pipeline.training.model import load_clap

WORDS = [
    "warm",
    "lo-fi",
    "guitar",
    "dark",
    "ambient",
    "folk",
    "upbeat",
    "piano",
    "jazz",
    "noise",
    "drums",
    "synth",
    "slow",
    "bright",
]


def queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 6), replace=False)) for _ in range(n)]


def test_int8_agrees_with_fp32_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    clap = load_clap(tiny_model_dir)
    clap.model.eval()
    fast = build_encoder(clap, "onnx-int8", tmp_path)
    reference = build_encoder(clap, "torch", tmp_path)
    texts = queries(300)
    got, want = fast(texts), reference(texts)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(got * want, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    # Same top-10 over a collection for >= 95 % of the queries.
    matrix = np.random.default_rng(1).standard_normal((2000, got.shape[1])).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    same = [
        set(top_k(matrix, g, 10)[0].tolist()) == set(top_k(matrix, w, 10)[0].tolist())
        for g, w in zip(got, want, strict=True)
    ]
    assert np.mean(same) >= 0.95, np.mean(same)
    # One query at a time (the service's path) gives the batch's embedding.
    np.testing.assert_allclose(fast([texts[0]])[0], got[0], atol=1e-4)


def test_export_is_keyed_by_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    clap = load_clap(tiny_model_dir)
    first = onnx_model_path(clap, "onnx-int8", tmp_path)
    mtime = first.stat().st_mtime_ns
    assert onnx_model_path(clap, "onnx-int8", tmp_path) == first  # reused, not re-exported
    assert first.stat().st_mtime_ns == mtime
    with torch.no_grad():
        clap.model.text_projection.linear1.weight.add_(0.01)  # other weights: another file
    second = onnx_model_path(clap, "onnx-int8", tmp_path)
    assert second != first
    assert not first.exists()  # the stale export is removed
    assert not clap.model.training  # the export leaves the model in eval mode
