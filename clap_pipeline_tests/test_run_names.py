"""Each name that one module writes and another reads is declared once (run_names, metrics).

The static half: no module but ``run_names.py`` and ``metrics.py`` spells an MLflow metric,
param or tag name as a string. The other half is behaviour: a real training run
(``training/test_training.py``) and a real evaluation (``defs/test_evaluation_assets.py``)
write every name ``evaluation/comparison.py`` reads.
"""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import clap_pipeline
from clap_pipeline import run_names
from clap_pipeline.metrics import DIRECTIONS, KS, METRIC_NAMES, metric_key, recall_key
from clap_pipeline.training.config import TrainConfig

PACKAGE = Path(clap_pipeline.__file__).parent
DECLARING = {PACKAGE / "run_names.py", PACKAGE / "metrics.py"}
# Words that are also keys of other typed contracts (training.json's TrainingReport, the
# Dagster metadata of clap_model, local folders, asset names) or, for TRAINING_SOURCE, the
# training package's module name (`python -m`): spelled there too.
SHARED_WORDS = {
    run_names.TRAINING_SOURCE,
    run_names.VALIDATION_FINGERPRINT_TAG,
    run_names.VAL_LOSS,
    run_names.BEST_EPOCH,
    run_names.N_TRAIN,
    run_names.DATA_VERSION,
    run_names.VERSION_EPOCH_TAG,
    run_names.CHECKPOINTS_ARTIFACT,
    run_names.PYFUNC_ARTIFACT,
    run_names.EVALUATION_ARTIFACT,
    run_names.COMPARISON_ARTIFACT,
    run_names.CONFIG_PARAM_PREFIX,
    run_names.VAL_PREFIX,
    run_names.EVAL_PREFIX,
    run_names.SERVED_SUFFIX,
    *run_names.EVAL_SPLITS,
    *run_names.EVAL_SPLITS.values(),
    *run_names.FEEDBACK_SCORES,
}


def declared_names() -> set[str]:
    """Every concrete name the two modules declare or build."""
    keys = {metric_key(d, m) for d in DIRECTIONS for m in METRIC_NAMES}
    names = {v for k, v in vars(run_names).items() if k.isupper() and isinstance(v, str)}
    names |= set(METRIC_NAMES) | keys | {run_names.val_metric(k) for k in keys}
    names |= {
        run_names.eval_metric(split, key, model)
        for split in run_names.EVAL_SPLITS
        for key in keys
        for model in ("", "zeroshot", "random")
    }
    names |= {run_names.config_param(f.name) for f in fields(TrainConfig)}
    names |= {
        run_names.feedback_metric(score, served)
        for score in run_names.FEEDBACK_SCORES
        for served in (False, True)
    }
    names |= {name for pair in run_names.held_out_recall_metrics().values() for name in pair}
    return names - SHARED_WORDS


def _strings(tree: ast.Module) -> list[ast.Constant]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_names_are_built_as_the_writers_wrote_them() -> None:
    assert recall_key(5) == "text_to_audio_recall_at_5" == run_names.SELECTION_METRIC
    assert run_names.val_metric(recall_key(5)) == run_names.VERSION_VAL_R5_TAG
    assert (
        run_names.eval_metric("validation", recall_key(1)) == "eval_val_text_to_audio_recall_at_1"
    )
    assert run_names.held_out_recall_metrics()[10] == (
        "eval_test_text_to_audio_recall_at_10",
        "test_text_to_audio_recall_at_10",
    )
    assert set(run_names.held_out_recall_metrics()) == set(KS)


def test_no_module_spells_a_declared_name() -> None:
    names = declared_names()
    assert len(names) > 100  # the metric keys and what is built from them
    spelled = [
        f"{module.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}"
        for module in sorted(PACKAGE.rglob("*.py"))
        if module not in DECLARING
        for node in _strings(ast.parse(module.read_text()))
        if node.value in names
    ]
    assert spelled == []


def test_the_shared_names_are_bound_in_one_module() -> None:
    """``Log``, ``KS`` and ``SELECTION_METRIC`` are assigned in one module each; the others import them."""
    owners: dict[str, list[str]] = {"Log": [], "KS": [], "SELECTION_METRIC": []}
    for module in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(module.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            targets += [node.target] if isinstance(node, ast.AnnAssign) else []
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            names += [node.name] if isinstance(node, ast.ClassDef) else []
            for name in names:
                if name in owners:
                    owners[name].append(str(module.relative_to(PACKAGE)))
    assert owners == {
        "Log": ["reporting.py"],
        "KS": ["metrics.py"],
        "SELECTION_METRIC": ["metrics.py"],
    }
