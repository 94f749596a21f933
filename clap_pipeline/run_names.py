"""What a training's MLflow run and its registered versions record, by name, declared once.

Every param, metric, tag and artifact folder that one module writes and another reads:

- the training run (``training/loop.py``, ``training/report.py`` write it): its source tag,
  the config and data params, the per-epoch ``val_*`` history, the best epoch;
- registered versions (``registry.py`` writes their tags; ``tracking.py`` and
  ``registry.py`` read them back: which checkpoint, which validation set, which R@5);
- what later assets add to the run: the evaluation's ``eval_*`` metrics
  (``evaluation/mlflow_log.py``) and the held-out feedback scores
  (``evaluation/feedback_eval.py``);
- and what reads them all: ``evaluation/comparison.py`` (every run side by side).

Retrieval metric keys themselves (``text_to_audio_recall_at_5``) are ``metrics.py``'s.
Names only their writer uses (most params, diagnostic tags) stay with the writer.
``clap_pipeline_tests/test_run_names.py`` checks that no other module spells one of these
names, and the training and evaluation tests that a real run writes what the readers read.
"""

from __future__ import annotations

from clap_pipeline.metrics import KS, SELECTION_METRIC, recall_key

# --------------------------------------------------------------------------- the training run

SOURCE_TAG = "mlflow.source.name"
TRAINING_SOURCE = "clap_pipeline.training"  # SOURCE_TAG of training runs
CONFIG_PARAM_PREFIX = "config."  # one param per TrainConfig field: config.max_epochs, ...
BEST_EPOCH = "best_epoch"  # a param and a metric (the metric for runs before the param)
DATA_VERSION = "data_version"  # param: selection's data version, when a selection is known
N_TRAIN = "n_train"  # param: training clips
VAL_LOSS = "val_loss"  # metric, one value per epoch (step = epoch)
VAL_PREFIX = "val_"  # val_<metric key>: validation retrieval, one value per epoch
BEST_VAL_METRIC = "best_" + VAL_PREFIX + SELECTION_METRIC  # metric: the selected epoch's
REGISTERED_VERSION_TAG = "registered_model_version"
REGISTERED_ALIAS_TAG = "registered_model_alias"
DAGSTER_RUN_IDS_TAG = "dagster_run_ids"  # every Dagster run that trained it (resumed runs)
CHECKPOINTS_ARTIFACT = "checkpoints"  # checkpoints/epoch-<n>: each epoch's save_pretrained
WISE_FT_ARTIFACT = CHECKPOINTS_ARTIFACT + "/wise-ft"  # WiSE-FT's weights (alpha < 1)


def config_param(field: str) -> str:
    """The param of a TrainConfig field."""
    return CONFIG_PARAM_PREFIX + field


def val_metric(key: str) -> str:
    """The per-epoch validation metric of a retrieval key (``val_text_to_audio_recall_at_5``)."""
    return VAL_PREFIX + key


def checkpoint_artifact(epoch: int | str) -> str:
    return f"{CHECKPOINTS_ARTIFACT}/epoch-{epoch}"


# --------------------------------------------------------------------------- registered versions

VERSION_CHECKPOINT_TAG = "local_checkpoint"  # the save_pretrained folder training kept
VERSION_VAL_R5_TAG = val_metric(recall_key(5))  # its validation text->audio R@5
VALIDATION_FINGERPRINT_TAG = "validation_fingerprint"  # which validation set (also a run tag)
VERSION_EPOCH_TAG = "epoch"
TRAINING_FINGERPRINT_TAG = "training_fingerprint"  # config + data of the run (also a run tag)
# The registered weights' WiSE-FT alpha (1 = the fine-tuned epoch's); also a run tag and metric.
WISE_FT_ALPHA_TAG = "wise_ft_alpha"
PYFUNC_ARTIFACT = "pyfunc"  # pyfunc/epoch-<n>: the registered versions as pyfunc models

# --------------------------------------------------------------------------- evaluation

EVAL_PREFIX = "eval_"
EVAL_SPLITS = {"test": "test", "validation": "val"}  # report split -> training's name
EVALUATION_ARTIFACT = "evaluation"  # evaluation.json, chart
LEGACY_TEST_RECALL = "test_text_to_audio_recall_at_{k}"  # evaluations before the eval_* names
FEEDBACK_PREFIX = "feedback_heldout_"  # feedback_heldout_<score>[_served]
FEEDBACK_SCORES = ("pairwise_accuracy", "liked_mean_rank")
SERVED_SUFFIX = "_served"  # the same score of the version being served when it ran
COMPARISON_ARTIFACT = "model_comparison"


def eval_metric(split: str, key: str, model: str = "") -> str:
    """``eval_[<model>_]<split>_<key>``; ``split`` as the report or training names it."""
    split = EVAL_SPLITS.get(split, split)
    return f"{EVAL_PREFIX}{model + '_' if model else ''}{split}_{key}"


def held_out_recall_metrics() -> dict[int, tuple[str, str]]:
    """k -> (the test text->audio R@k metric, its name before the eval_* scheme)."""
    return {k: (eval_metric("test", recall_key(k)), LEGACY_TEST_RECALL.format(k=k)) for k in KS}


def feedback_metric(score: str, served: bool = False) -> str:
    return FEEDBACK_PREFIX + score + (SERVED_SUFFIX if served else "")
