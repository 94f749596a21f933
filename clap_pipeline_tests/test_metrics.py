"""Retrieval metrics against hand-computed cases, bootstrap intervals and random baselines."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.metrics import (
    METRIC_NAMES,
    bootstrap_rank_metrics,
    empirical_random_metrics,
    match_ranks,
    metrics_from_ranks,
    random_expected_metrics,
    random_rankings,
    random_recall,
    retrieval_metrics,
    retrieval_metrics_blockwise,
    retrieval_metrics_with_ci,
)

# Rows = texts, columns = clips; pair i <-> i. Ranks worked out by hand below.
HAND = np.array(
    [
        [0.9, 0.1, 0.2, 0.3],  # match 0.9 is the highest            -> t2a rank 0
        [0.8, 0.5, 0.7, 0.1],  # 0.8 and 0.7 beat 0.5                 -> t2a rank 2
        [0.1, 0.2, 0.3, 0.4],  # 0.4 beats 0.3                        -> t2a rank 1
        [0.6, 0.6, 0.6, 0.6],  # three ties, counted against the match -> t2a rank 3
    ]
)
# Columns (audio -> text): col0 0.9 top -> 0; col1 0.6 beats 0.5 -> 1;
# col2 0.7, 0.6 beat 0.3 -> 2; col3 0.6 is the highest (ties nothing) -> 0.


def test_hand_computed_ranks_and_metrics_both_directions() -> None:
    assert match_ranks(HAND).tolist() == [0, 2, 1, 3]
    assert match_ranks(HAND.T).tolist() == [0, 1, 2, 0]
    m = retrieval_metrics(HAND)
    expected = {
        "text_to_audio_recall_at_1": 1 / 4,
        "text_to_audio_recall_at_5": 1.0,
        "text_to_audio_recall_at_10": 1.0,
        "text_to_audio_median_rank": 2.0,  # floor(median(0, 1, 2, 3) = 1.5) + 1
        "text_to_audio_mean_rank": 2.5,  # mean 1.5 + 1
        "text_to_audio_map_at_10": (1 + 1 / 3 + 1 / 2 + 1 / 4) / 4,
        "audio_to_text_recall_at_1": 2 / 4,
        "audio_to_text_recall_at_5": 1.0,
        "audio_to_text_recall_at_10": 1.0,
        "audio_to_text_median_rank": 1.0,  # floor(median(0, 0, 1, 2) = 0.5) + 1
        "audio_to_text_mean_rank": 1.75,
        "audio_to_text_map_at_10": (1 + 1 / 2 + 1 / 3 + 1) / 4,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_ties_are_pessimistic_and_deterministic() -> None:
    # Match (0.5) tied with one item and beaten by another: both count above it.
    row_tied = np.array([[0.5, 0.1, 0.5, 0.7], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert match_ranks(row_tied)[0] == 2
    # A constant model ranks every match last, never a lucky first.
    constant = np.full((6, 6), 0.3)
    assert match_ranks(constant).tolist() == [5] * 6
    m = retrieval_metrics(constant)
    assert m["text_to_audio_recall_at_1"] == 0.0
    assert m["text_to_audio_recall_at_5"] == 0.0  # rank 5 is the 6th place
    assert m["audio_to_text_mean_rank"] == 6.0
    # Same input, same answer (no random tie-breaking).
    assert match_ranks(constant).tolist() == match_ranks(constant.copy()).tolist()


def test_perfect_diagonal() -> None:
    m = retrieval_metrics(np.eye(12))
    for direction in ("text_to_audio", "audio_to_text"):
        assert m[f"{direction}_recall_at_1"] == 1.0
        assert m[f"{direction}_median_rank"] == 1.0
        assert m[f"{direction}_mean_rank"] == 1.0
        assert m[f"{direction}_map_at_10"] == 1.0


def test_reversed_order_puts_every_match_last() -> None:
    n = 12
    i, j = np.indices((n, n))
    sim = ((j - i) % n).astype(float)  # distinct scores per row, the match scores lowest (0)
    assert match_ranks(sim).tolist() == [n - 1] * n
    m = retrieval_metrics(sim)
    assert m["text_to_audio_recall_at_10"] == 0.0
    assert m["text_to_audio_median_rank"] == 12.0
    assert m["text_to_audio_mean_rank"] == 12.0
    assert m["text_to_audio_map_at_10"] == 0.0
    # Column-wise the matches are also last ((j - i) % n is 0 only on the diagonal).
    assert m["audio_to_text_mean_rank"] == 12.0


def test_map_at_10_cutoff_and_median_rank_rounding() -> None:
    m = metrics_from_ranks(np.array([0, 1, 2, 4, 9, 10, 20]))
    assert m["map_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 5 + 1 / 10) / 7)
    assert m["recall_at_10"] == pytest.approx(5 / 7)  # rank 9 counts, rank 10 does not
    assert m["recall_at_5"] == pytest.approx(4 / 7)
    assert m["median_rank"] == 5.0  # median 4 -> 4 + 1
    assert m["mean_rank"] == pytest.approx(46 / 7 + 1)
    assert metrics_from_ranks(np.array([9, 10]))["map_at_10"] == pytest.approx(0.05)
    assert metrics_from_ranks(np.array([0, 3]))["median_rank"] == 2.0  # floor(1.5) + 1
    assert metrics_from_ranks(np.array([0, 0, 3]))["median_rank"] == 1.0


def test_random_expected_metrics_by_hand() -> None:
    r = random_expected_metrics(4)
    assert r["recall_at_1"] == 0.25 and r["recall_at_5"] == 1.0 and r["recall_at_10"] == 1.0
    assert r["mean_rank"] == 2.5
    assert r["median_rank"] == 2.0
    assert r["map_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    r20 = random_expected_metrics(20)
    assert r20["recall_at_5"] == random_recall(5, 20) == 0.25
    assert r20["map_at_10"] == pytest.approx(sum(1 / k for k in range(1, 11)) / 20)
    with pytest.raises(ValueError):
        random_expected_metrics(0)


def test_random_rankings_have_the_law_of_random_similarity_matrices() -> None:
    """The drawn ranks match ranks of i.i.d. random scores passed through match_ranks."""
    n, rounds = 10, 600
    rng = np.random.default_rng(1)
    simulated = np.concatenate([match_ranks(rng.normal(size=(n, n))) for _ in range(rounds)])
    drawn = random_rankings(n, rounds, np.random.default_rng(2)).ravel()
    assert drawn.min() == 0 and drawn.max() == n - 1
    hist_sim = np.bincount(simulated, minlength=n) / simulated.size
    hist_drawn = np.bincount(drawn, minlength=n) / drawn.size
    # Both uniform on 0..n-1: each bin ~0.1 with a standard error ~0.004.
    np.testing.assert_allclose(hist_sim, 1 / n, atol=0.02)
    np.testing.assert_allclose(hist_drawn, 1 / n, atol=0.02)


def test_empirical_random_baseline_is_seeded_and_matches_the_exact_one() -> None:
    n = 40
    a = empirical_random_metrics(n, rounds=2000, seed=3)
    assert a == empirical_random_metrics(n, rounds=2000, seed=3)
    assert a != empirical_random_metrics(n, rounds=2000, seed=4)
    exact = random_expected_metrics(n)
    for direction in ("text_to_audio", "audio_to_text"):
        for name in METRIC_NAMES:
            stat = a[f"{direction}_{name}"]
            assert stat["ci_low"] <= stat["value"] <= stat["ci_high"]
            assert stat["ci_low"] <= exact[name] <= stat["ci_high"], name
        # Mean over 2000 rounds of 40 queries: standard error ~ 0.0015 for R@5.
        assert a[f"{direction}_recall_at_5"]["value"] == pytest.approx(5 / 40, abs=0.006)
        assert a[f"{direction}_mean_rank"]["value"] == pytest.approx(20.5, abs=0.2)
        assert a[f"{direction}_map_at_10"]["value"] == pytest.approx(exact["map_at_10"], abs=0.003)


def signal_similarity(n: int, seed: int, strength: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n)) + strength * np.eye(n)


def test_bootstrap_values_equal_the_plain_metrics_and_intervals_contain_them() -> None:
    for seed in range(4):
        sim = signal_similarity(60, seed)
        with_ci = retrieval_metrics_with_ci(sim, n_resamples=500, seed=seed)
        plain = retrieval_metrics(sim)
        assert with_ci.keys() == plain.keys()
        for key, stat in with_ci.items():
            assert stat["value"] == plain[key]
            assert stat["ci_low"] <= stat["value"] <= stat["ci_high"], key
            assert stat["ci_low"] < stat["ci_high"] or key.endswith("recall_at_10"), key


def test_bootstrap_is_seeded_and_degenerate_when_every_query_agrees() -> None:
    sim = signal_similarity(30, 0)
    assert retrieval_metrics_with_ci(sim, seed=5) == retrieval_metrics_with_ci(sim, seed=5)
    assert retrieval_metrics_with_ci(sim, seed=5) != retrieval_metrics_with_ci(sim, seed=6)
    perfect = retrieval_metrics_with_ci(np.eye(8), n_resamples=200)
    assert perfect["text_to_audio_recall_at_1"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}


def test_bootstrap_interval_narrows_with_n_and_matches_the_binomial_width() -> None:
    ranks = match_ranks(signal_similarity(50, 7))
    small = bootstrap_rank_metrics({"t": ranks}, n_resamples=2000, seed=0)
    big = bootstrap_rank_metrics({"t": np.tile(ranks, 16)}, n_resamples=2000, seed=0)
    for name in ("recall_at_1", "recall_at_5", "mean_rank", "map_at_10"):
        key = f"t_{name}"
        assert big[key]["value"] == pytest.approx(small[key]["value"])  # same point estimate
        width_small = small[key]["ci_high"] - small[key]["ci_low"]
        width_big = big[key]["ci_high"] - big[key]["ci_low"]
        assert 0 < width_big < 0.4 * width_small, (name, width_small, width_big)  # ~1/sqrt(16)
    # A recall is a binomial proportion: the 95 % interval is ~ 2 * 1.96 * sqrt(p(1-p)/N).
    p, n = big["t_recall_at_5"]["value"], 50 * 16
    width = big["t_recall_at_5"]["ci_high"] - big["t_recall_at_5"]["ci_low"]
    assert width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.15)


def test_bootstrap_resamples_pairs_jointly_and_rejects_bad_input() -> None:
    # Identical ranks in two directions give identical intervals: the same indices are drawn.
    ranks = match_ranks(signal_similarity(40, 2))
    both = bootstrap_rank_metrics({"a": ranks, "b": ranks.copy()}, n_resamples=300, seed=1)
    for name in METRIC_NAMES:
        assert both[f"a_{name}"] == both[f"b_{name}"]
    with pytest.raises(ValueError, match="same non-zero number"):
        bootstrap_rank_metrics({"a": ranks, "b": ranks[:-1]})
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_rank_metrics({"a": ranks}, confidence=95)
    with pytest.raises(ValueError, match="square"):
        match_ranks(np.ones((2, 3)))


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1024])
def test_blockwise_metrics_equal_the_dense_matrix_on_random_embeddings(block_rows: int) -> None:
    """Validation's blockwise metrics = the dense N x N ones, ties included (quantized values)."""
    rng = np.random.default_rng(3)
    # Few distinct values per coordinate: many exact ties, which the pessimistic rule must see.
    text = rng.integers(-2, 3, size=(301, 4)).astype(np.float32)
    audio = rng.integers(-2, 3, size=(301, 4)).astype(np.float32)
    dense = retrieval_metrics(text.astype(np.float64) @ audio.astype(np.float64).T)
    blockwise = retrieval_metrics_blockwise(text, audio, block_rows=block_rows)
    assert blockwise == dense
    assert dense["text_to_audio_recall_at_10"] != dense["audio_to_text_recall_at_10"] or (
        dense["text_to_audio_mean_rank"] != dense["audio_to_text_mean_rank"]
    )  # the two directions are really computed apart
