"""Exact-pair retrieval per split: each model's metrics with intervals, next to random.

Ranks follow LAION-AI/CLAP's conventions (``clap_pipeline.metrics``:
pessimistic ties, bootstrap over per-query ranks); the random baseline is exact (k/N)
and empirical (seeded random rankings over the same N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from clap_pipeline.evaluation.inputs import EvalConfig, SplitClips
from clap_pipeline.evaluation.report import (
    IdenticalPrompts,
    Interval,
    ModelScores,
    RandomBaseline,
    SplitRetrieval,
)
from clap_pipeline.metrics import (
    AUDIO_TO_TEXT,
    DIRECTIONS,
    METRIC_NAMES,
    SELECTION_METRIC,
    TEXT_TO_AUDIO,
    bootstrap_rank_metrics,
    empirical_random_metrics,
    match_ranks_blockwise,
    random_expected_metrics,
)
from clap_pipeline.reporting import Log

if TYPE_CHECKING:  # the encoder module loads torch
    from clap_pipeline.evaluation.encoder import Embedded

IDENTICAL_PROMPTS_CONVENTION = (
    "clips whose prompt text is identical to the match's are not counted above it (the "
    "strict numbers in `models` count them as misses)"
)


def prompt_groups(prompts: Sequence[str]) -> np.ndarray:
    """One id per distinct prompt text: pairs with identical prompts share it."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(p, len(ids)) for p in prompts], dtype=np.int64)


def retrieval_metrics(
    text: np.ndarray, audio: np.ndarray, config: EvalConfig, groups: np.ndarray | None = None
) -> dict[str, Interval]:
    """Both directions' metrics with bootstrap intervals; ``groups`` merges identical prompts."""
    ranks = {
        TEXT_TO_AUDIO: match_ranks_blockwise(text, audio, groups=groups),
        AUDIO_TO_TEXT: match_ranks_blockwise(audio, text, groups=groups),
    }
    stats = bootstrap_rank_metrics(
        ranks, n_resamples=config.n_bootstrap, seed=config.seed, confidence=config.confidence
    )
    return {key: Interval(**stat) for key, stat in stats.items()}


def random_baseline(n: int, config: EvalConfig) -> RandomBaseline:
    exact_one = random_expected_metrics(n)
    empirical = empirical_random_metrics(
        n, rounds=config.random_rounds, seed=config.seed, confidence=config.confidence
    )
    return RandomBaseline(
        exact={f"{d}_{m}": exact_one[m] for d in DIRECTIONS for m in METRIC_NAMES},
        empirical={key: Interval(**stat) for key, stat in empirical.items()},
    )


def split_retrieval(
    split: SplitClips, embedded: Mapping[str, Embedded], config: EvalConfig
) -> SplitRetrieval:
    """Every model of ``embedded`` on one split (an empty split has no models)."""
    n = len(split.track_ids)
    groups = prompt_groups(split.prompts)
    sharing = int(np.isin(groups, np.flatnonzero(np.bincount(groups) > 1)).sum()) if n else 0
    block = SplitRetrieval(
        n=n,
        n_expected=split.expected,
        missing_track_ids=split.missing,
        models={},
        random=random_baseline(n, config) if n else None,
        identical_prompts=IdenticalPrompts(sharing, IDENTICAL_PROMPTS_CONVENTION),
    )
    if not n:
        return block
    for model_key, run in embedded.items():
        text, audio = run.text[split.name], run.audio[split.name]
        block.models[model_key] = ModelScores(run.source, retrieval_metrics(text, audio, config))
        if sharing:
            block.identical_prompts.models[model_key] = retrieval_metrics(
                text, audio, config, groups
            )
    return block


def evaluate_retrieval(
    clips: Mapping[str, SplitClips],
    embedded: Mapping[str, Embedded],
    config: EvalConfig,
    say: Log,
) -> dict[str, SplitRetrieval]:
    """Each split's block; logs the headline text->audio R@5."""
    out = {}
    for name, split in clips.items():
        out[name] = block = split_retrieval(split, embedded, config)
        for model_key, scores in block.models.items():
            r5 = scores.metrics[SELECTION_METRIC].value
            say(f"{model_key} {name}: text->audio R@5 {r5:.3f} (N={block.n})")
    return out
