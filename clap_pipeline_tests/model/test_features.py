"""LogMelFeatures (torch) against transformers' ClapFeatureExtractor (numpy), within 1e-3 dB."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from clap_pipeline.model.clap import audio_embeddings, load_clap, unfused_feature_extractor
from clap_pipeline.model.features import LogMelFeatures, features_for_model, repeat_frame_plan

SR = 48_000
WINDOW = 10 * SR  # the extractor's max length (480,000 samples)
TOLERANCE_DB = 1e-3


@pytest.fixture(scope="module")
def extractor():
    return unfused_feature_extractor()


@pytest.fixture(scope="module")
def features(extractor) -> LogMelFeatures:
    return LogMelFeatures(extractor)


def music_like(n: int, seed: int, amplitude: float = 0.3) -> np.ndarray:
    """Tones with a slow envelope plus noise: a wide dynamic range across mel bins and frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    tones = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / (k + 1)
        for k, f in enumerate(rng.uniform(60, 9_000, size=6))
    )
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t) ** 2
    wave = amplitude * (envelope * tones / 3 + 0.05 * rng.standard_normal(n))
    return wave.astype(np.float32)


def reference(extractor, clips) -> np.ndarray:
    out = extractor(list(clips), sampling_rate=SR, return_tensors="np")["input_features"]
    return np.asarray(out)


def max_db_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    assert tuple(ours.shape) == theirs.shape
    return float(np.abs(ours.numpy().astype(np.float64) - theirs).max())


def test_stored_5s_batch_matches_extractor(extractor, features) -> None:
    # The waveforms contract: (B, 240000) float32, short decodes zero-padded to 5 s.
    batch = np.stack([music_like(240_000, seed) for seed in range(4)])
    batch[1, 150_000:] = 0.0  # a 3.1-s decode stored zero-padded: repeatpad tiles the zeros too
    batch[2] *= 1e-3  # quiet clip, values far below 0 dB
    ours = features(torch.from_numpy(batch))
    theirs = reference(extractor, batch)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (4, 1, 1001, 64)
    assert max_db_diff(ours, theirs) < TOLERANCE_DB
    # Repeatpad of a 5-s clip = two copies: frame 100 and frame 600 see the same samples.
    assert torch.allclose(ours[0, 0, 100], ours[0, 0, 600], atol=1e-4)


def test_mixed_lengths_repeatpad_exact_and_rand_trunc(extractor, features) -> None:
    clips = [
        music_like(2 * SR, 10),  # 2 s: tiled 5x, exactly 10 s
        music_like(144_000, 11),  # 3 s: tiled 3x (9 s) then 1 s of zeros
        music_like(WINDOW, 12),  # exactly 10 s: used as is
        music_like(WINDOW + 123_457, 13),  # > 10 s: a random 10-s window
        music_like(WINDOW + 5 * SR, 14),
    ]
    # The extractor draws rand_trunc offsets from numpy's global RNG, one per long clip in
    # batch order: seed it, then replay the same draws to hand our module the same windows.
    np.random.seed(1234)
    theirs = reference(extractor, clips)
    np.random.seed(1234)
    offsets = [
        int(np.random.randint(0, len(c) - WINDOW + 1)) if len(c) > WINDOW else None for c in clips
    ]
    assert offsets[3] and offsets[4]  # windows away from the start, or the test proves little
    ours = features([torch.from_numpy(c) for c in clips], offsets=offsets)
    assert max_db_diff(ours, theirs) < TOLERANCE_DB
    # Zero padding after the 3 tiles of the 3-s clip: the floor (-100 dB) in the last frames.
    assert float(ours[1, 0, -10:].max()) == pytest.approx(-100.0)
    # A different window gives different features: the offsets were really applied.
    shifted = features([torch.from_numpy(clips[3])], offsets=[0])
    assert float((shifted[0] - ours[3]).abs().max()) > 1.0


@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
@pytest.mark.parametrize("length", [96_000, 144_000, 100_001])
def test_uniform_short_batches_match_extractor(extractor, padding: str, length: int) -> None:
    # Uniform batches take the fast path that computes repeated frames once (2 s tiled 5x:
    # period 200 frames; 3 s: 3 tiles + zeros; 100,001 samples: no repeated frames).
    fe = copy.deepcopy(extractor)
    fe.padding = padding
    module = LogMelFeatures(fe)
    batch = np.stack([music_like(length, 60), music_like(length, 61, amplitude=0.01)])
    ours = module(torch.from_numpy(batch))
    assert max_db_diff(ours, reference(fe, batch)) < TOLERANCE_DB
    # The same windows computed frame by frame, without the repeat shortcut.
    full = module.log_mel(module.fit_to_window(torch.from_numpy(batch)))
    assert float((full - ours).abs().max()) < 1e-4


def test_lengths_argument_tiles_only_the_real_audio(extractor, features) -> None:
    batch = np.stack([music_like(240_000, 20), music_like(240_000, 21)])
    lengths = [96_000, 240_000]  # e.g. n_samples_decoded
    ours = features(torch.from_numpy(batch), lengths=torch.tensor(lengths))
    theirs = reference(extractor, [batch[0, :96_000], batch[1]])
    assert max_db_diff(ours, theirs) < TOLERANCE_DB
    # Without lengths the stored zero-padded rows are tiled, as the extractor does on them.
    assert float((features(torch.from_numpy(batch))[0] - ours[0]).abs().max()) > 1.0


def test_rand_trunc_window_from_generator_matches_extractor_on_that_window(
    extractor,
) -> None:
    long_clip = music_like(WINDOW + 2 * SR, 30)
    overflow = len(long_clip) - WINDOW
    seeded = LogMelFeatures(extractor, seed=7)
    first = seeded(torch.from_numpy(long_clip))
    # The module's generator is torch.Generator().manual_seed(7): one draw per long clip.
    start = int(torch.randint(0, overflow + 1, (1,), generator=torch.Generator().manual_seed(7)))
    theirs = reference(extractor, [long_clip[start : start + WINDOW]])
    assert max_db_diff(first, theirs) < TOLERANCE_DB
    # Same seed -> same window; an explicit generator overrides the module's own.
    again = LogMelFeatures(extractor, seed=7)(torch.from_numpy(long_clip))
    assert torch.equal(first, again)
    other = LogMelFeatures(extractor, seed=7)(
        torch.from_numpy(long_clip), generator=torch.Generator().manual_seed(8)
    )
    start_8 = int(torch.randint(0, overflow + 1, (1,), generator=torch.Generator().manual_seed(8)))
    assert start_8 != start
    assert max_db_diff(other, reference(extractor, [long_clip[start_8 : start_8 + WINDOW]])) < (
        TOLERANCE_DB
    )


def test_float32_under_bf16_autocast_and_no_grad(features) -> None:
    batch = torch.from_numpy(np.stack([music_like(240_000, 40), music_like(240_000, 41)]))
    plain = features(batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = features(batch)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, plain)
    # Float64 input is computed in float32, like the rest.
    assert features(batch.double()).dtype == torch.float32


def test_tiny_model_accepts_the_features(tiny_model_dir: Path) -> None:
    clap = load_clap(tiny_model_dir)
    feats_module = features_for_model(clap, "cpu")
    assert not feats_module.training
    batch = torch.from_numpy(np.stack([music_like(240_000, s) for s in (50, 51, 52)]))
    with torch.no_grad():
        feats = feats_module(batch)
        emb = audio_embeddings(clap.model, feats)
    assert tuple(feats.shape) == (3, 1, 1001, 64)
    assert tuple(emb.shape) == (3, 32)
    assert torch.isfinite(emb).all()
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # The saved extractor (hub settings) gives the same module as the in-code one.
    assert torch.equal(
        feats_module.mel_filters, LogMelFeatures(unfused_feature_extractor()).mel_filters
    )


def test_bad_inputs_name_the_problem(extractor, features) -> None:
    from transformers import ClapFeatureExtractor

    with pytest.raises(ValueError, match="rand_trunc"):
        LogMelFeatures(ClapFeatureExtractor())  # class defaults: fusion, 4-channel features
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        features(torch.zeros(2, 1, 240_000))
    with pytest.raises(ValueError, match="empty batch"):
        features(torch.zeros(0, 240_000))
    with pytest.raises(ValueError, match=r"waveforms\[1\] is empty"):
        features([torch.ones(10), torch.zeros(0)])
    with pytest.raises(ValueError, match=r"lengths\[0\]=300000"):
        features(torch.zeros(2, 240_000), lengths=[300_000, 10])
    with pytest.raises(ValueError, match="lengths has 1 entries for 2 clips"):
        features(torch.zeros(2, 240_000), lengths=[10])
    with pytest.raises(ValueError, match=r"offsets\[0\]=9"):
        features([torch.zeros(WINDOW + 5)], offsets=[9])


def test_repeat_frame_plan_for_stored_clips() -> None:
    # A 5-s clip tiled twice is periodic over the whole window: frames 2..501 are one period
    # (500 frames) and 502..998 repeat them; 0, 1, 999, 1000 reach into the reflect padding.
    computed, source = repeat_frame_plan(240_000, 480_000, 1024, 480, 1001)
    assert computed == (*range(502), 999, 1000) and len(source) == 1001
    assert computed[source[600]] == 100 and computed[source[998]] == 498
    assert computed[source[999]] == 999 and computed[source[1000]] == 1000
    # A length sharing no factor with the hop never repeats a frame within 10 s.
    assert repeat_frame_plan(100_001, 400_004, 1024, 480, 1001) is None
