"""Registering a trained checkpoint in MLflow and the champion decision (no torch, no Dagster).

Each training run registers its best epoch as a version of ``clap-fma``; it takes
the ``champion`` alias when its validation R@5 beats the champion's *on the same
validation set* (re-scored when the set changed), else ``challenger``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clap_pipeline import run_names, tracking


@dataclass(frozen=True)
class Candidate:
    """The epoch a run offers to the registry."""

    run_id: str
    epoch: int
    checkpoint: Path
    val_recall_at_5: float
    val_fingerprint: str  # which validation set the R@5 is on
    training_fingerprint: str
    wise_ft_alpha: float | None = None  # the weights are WiSE-FT's theta(alpha) (None: not run)


def champion_recall(
    mlflow_client,
    name: str,
    val_fingerprint: str,
    score: Callable[[Path], float],
    report: Callable[[str], None] = lambda message: None,
    tracking_uri: str | None = None,
) -> tuple[Any, float | None]:
    """The champion version of ``name`` and its val R@5 on *this* validation set.

    The tagged value when the champion was validated on the same set, else
    ``score(champion_folder)`` (new tracks changed the set). None when there is
    no champion, or its files are gone (then the new model replaces it).
    """
    champion = tracking.alias_version(mlflow_client, name, tracking.CHAMPION)
    if champion is None:
        return None, None
    if champion.tags.get(run_names.VALIDATION_FINGERPRINT_TAG) == val_fingerprint:
        return champion, float(champion.tags[run_names.VERSION_VAL_R5_TAG])
    try:
        folder = tracking.version_local_dir(champion, tracking_uri=tracking_uri)
    except Exception as exc:
        report(f"champion v{champion.version} unavailable ({exc})")
        return champion, None
    report(f"scoring champion v{champion.version} on this validation set")
    return champion, score(folder)


def register_candidate(
    mlflow_client,
    name: str,
    candidate: Candidate,
    *,
    source: str,
    score: Callable[[Path], float],
    report: Callable[[str], None] = lambda message: None,
    tracking_uri: str | None = None,
) -> tuple[str, str]:
    """Register ``candidate`` (files at ``source``) and alias it; returns (version, alias)."""
    version = tracking.register_checkpoint(
        mlflow_client,
        name,
        run_id=candidate.run_id,
        source=source,
        tags={
            run_names.VERSION_CHECKPOINT_TAG: str(candidate.checkpoint),
            run_names.VERSION_VAL_R5_TAG: repr(candidate.val_recall_at_5),
            run_names.VALIDATION_FINGERPRINT_TAG: candidate.val_fingerprint,
            run_names.VERSION_EPOCH_TAG: str(candidate.epoch),
            run_names.TRAINING_FINGERPRINT_TAG: candidate.training_fingerprint,
            **(
                {}
                if candidate.wise_ft_alpha is None
                else {run_names.WISE_FT_ALPHA_TAG: repr(candidate.wise_ft_alpha)}
            ),
        },
    )
    champion, champion_r5 = champion_recall(
        mlflow_client, name, candidate.val_fingerprint, score, report, tracking_uri
    )
    if champion is not None and str(champion.version) == version:
        alias = tracking.CHAMPION  # resumed after the promotion: keep it
    else:
        alias = tracking.choose_alias(candidate.val_recall_at_5, champion_r5)
    mlflow_client.set_registered_model_alias(name, alias, version)
    detail = (
        "no champion yet"
        if champion is None or champion_r5 is None
        else f"champion v{champion.version} val R@5 {champion_r5:.3f}"
    )
    mlflow_client.set_model_version_tag(
        name,
        version,
        "alias_decision",
        f"{alias}: val R@5 {candidate.val_recall_at_5:.3f} vs {detail}",
    )
    mlflow_client.set_tag(candidate.run_id, run_names.REGISTERED_VERSION_TAG, version)
    mlflow_client.set_tag(candidate.run_id, run_names.REGISTERED_ALIAS_TAG, alias)
    report(
        f"best epoch {candidate.epoch} (val R@5 {candidate.val_recall_at_5:.3f}) registered as "
        f"{name} v{version} @{alias} ({detail})"
    )
    return version, alias
