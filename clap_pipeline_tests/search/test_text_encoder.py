"""The service's ONNX Runtime int8 query encoder against the fp32 PyTorch model it came from."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_pipeline.model.clap import load_clap
from clap_pipeline.search.text_encoder import BatchingEncoder, build_encoder, onnx_model_path
from clap_pipeline.search.vector_index import top_k

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


@pytest.mark.parametrize(
    ("kind", "same_top10", "overlap"), [("onnx", 0.95, 0.99), ("onnx-int8", 0.5, 0.9)]
)
def test_onnx_agrees_with_fp32_torch(
    tiny_model_dir: Path, tmp_path: Path, kind: str, same_top10: float, overlap: float
) -> None:
    """Cosine >= 0.99 to fp32 PyTorch for both; the same top-10 for >= 95 % with fp32 ONNX.

    int8 moves each embedding by about 2e-4 in cosine; this random-weight model maps all
    queries within about 2e-3 of each other, so near-tied top-10 sets swap members: its
    set agreement is measured (bench_serve.py), the test bounds it and the overlap.
    """
    clap = load_clap(tiny_model_dir)
    clap.model.eval()
    fast = build_encoder(clap, kind, tmp_path)
    reference = build_encoder(clap, "torch", tmp_path)
    texts = queries(300)
    got, want = fast(texts), reference(texts)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(got * want, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    matrix = np.random.default_rng(1).standard_normal((2000, got.shape[1])).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    found = [set(top_k(matrix, g, 10)[0].tolist()) for g in got]
    exact = [set(top_k(matrix, w, 10)[0].tolist()) for w in want]
    same = np.mean([f == e for f, e in zip(found, exact, strict=True)])
    shared = np.mean([len(f & e) / 10 for f, e in zip(found, exact, strict=True)])
    assert same >= same_top10 and shared >= overlap, (same, shared)
    # One query at a time (the service's path) gives the batch's embedding (int8: the
    # activations' scale is per batch, so only nearly).
    assert float(fast([texts[0]])[0] @ got[0]) >= 0.999


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


def test_batching_encoder_answers_each_request_and_batches_concurrent_ones() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        gate.wait(5)  # the first call holds the workers until every request is queued
        calls.append(len(texts))
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)

    encoder = BatchingEncoder(encode, workers=1, max_batch=16)
    texts = ["a" * n for n in range(1, 13)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(encoder, [t]) for t in texts]
        time.sleep(0.3)
        gate.set()
        answers = [f.result(timeout=10) for f in futures]
    assert [int(a[0, 0]) for a in answers] == list(range(1, 13))  # each its own row
    assert sum(calls) == 12 and len(calls) < 12 and max(calls) > 1

    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("encoder failed")

    failing = BatchingEncoder(broken, workers=2)
    with pytest.raises(RuntimeError, match="encoder failed"):
        failing(["x"])
    failing.close()
    assert encoder.stats.texts == 12 and encoder.stats.batches == len(calls)
    encoder.close()
