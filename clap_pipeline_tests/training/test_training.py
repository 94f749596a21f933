"""Fine-tuning the tiny CLAP on a synthetic set whose audio depends on its text.

One MLflow SQLite store per module; each test uses its own checkpoints folder,
report path and (where aliases matter) registered-model name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clap_pipeline import run_names, tracking
from clap_pipeline.cli.train import train_main
from clap_pipeline.dataset import TrainingDataError
from clap_pipeline.evaluation.comparison import KEY_PARAMS, collect_runs
from clap_pipeline.metrics import KS, random_recall, recall_key, retrieval_metrics
from clap_pipeline.model.clap import load_clap, tokenize
from clap_pipeline.model.features import features_for_model
from clap_pipeline.registry import champion_recall
from clap_pipeline.training.config import (
    NonFiniteLossError,
    TrainConfig,
    TrainingError,
    TrainInputs,
    learning_rate_at,
)
from clap_pipeline.training.data import TrainingData
from clap_pipeline.training.features import CachedFeatures
from clap_pipeline.training.loop import TrainingHooks, _autocast, evaluate_split, train
from clap_pipeline.training.loss import (
    LOGIT_SCALE_MAX,
    EpochRecord,
    best_epoch,
    clamp_logit_scale,
    contrastive_loss,
    optimizer_groups,
    prepare_logit_scales,
    should_stop,
)
from clap_pipeline.training.report import TrainingResult
from clap_pipeline.training.wise_ft import alpha_grid, interpolate
from clap_pipeline_tests.training_fixtures import (
    SyntheticData,
    mlflow_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    training_inputs,
    write_training_dataset,
)

# A short fine-tune that learns the synthetic pairing: small batches, a high lr, the
# default patience of 1.
LEARN = TrainConfig(
    batch_size=4,
    learning_rate=5e-3,
    max_epochs=3,
    system_metrics=False,
)
TEST_MODEL = "clap-fma-test"  # the registered model of these tests' runs
# Cheap runs for the fault and resume tests (2 steps per epoch).
QUICK = TrainConfig(
    batch_size=16, learning_rate=1e-3, max_epochs=2, patience=5, system_metrics=False
)

# ----------------------------------------------------------------------------- loss and rule


def reference_infonce(text: np.ndarray, audio: np.ndarray, scale: float) -> float:
    """Independent reference: both cross-entropies written out with Python loops."""
    n = len(text)
    sim = [[scale * float(np.dot(audio[i], text[j])) for j in range(n)] for i in range(n)]
    audio_to_text = -sum(sim[i][i] - math.log(sum(math.exp(v) for v in sim[i])) for i in range(n))
    text_to_audio = -sum(
        sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)
    )
    return (audio_to_text + text_to_audio) / (2 * n)


def test_contrastive_loss_known_value_for_orthonormal_pairs() -> None:
    # Matched pairs on orthonormal axes: every row and column is [s, 0], CE = log(1 + e^-s).
    eye = torch.eye(2)
    loss = contrastive_loss(eye, eye, torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)
    # Swapped pairs: the match scores 0 and the other 2, CE = log(1 + e^2).
    swapped = contrastive_loss(eye, eye.flip(0), torch.tensor(math.log(2.0)))
    assert swapped.item() == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-5)


def test_contrastive_loss_matches_an_independent_reference_in_both_directions() -> None:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((5, 3))
    audio = rng.standard_normal((5, 3))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    ours = contrastive_loss(
        torch.tensor(text), torch.tensor(audio), torch.tensor(math.log(1 / 0.07))
    )
    assert ours.item() == pytest.approx(reference_infonce(text, audio, 1 / 0.07), rel=1e-5)
    # The two directions differ on this data: a one-directional loss would not match.
    one_way = F.cross_entropy(torch.tensor(audio @ text.T / 0.07), torch.arange(5)).item()
    assert ours.item() != pytest.approx(one_way, rel=1e-3)


def test_training_loss_uses_logit_scale_a_for_both_directions(tiny_model_dir: Path) -> None:
    loaded = load_clap(tiny_model_dir)
    model = loaded.model.eval()
    with torch.no_grad():
        model.logit_scale_a.fill_(math.log(50.0))
        model.logit_scale_t.fill_(math.log(1 / 0.07))
    torch.manual_seed(0)
    features = torch.randn(4, 1, 1001, 64) * 10 - 50
    tokens = tokenize(loaded.tokenizer, ["a drone", "whistle", "noise bursts", "clicks clicks"])
    out = model(**tokens, input_features=features, return_loss=True)
    ours = contrastive_loss(out.text_embeds, out.audio_embeds, model.logit_scale_a)
    expected = reference_infonce(
        out.text_embeds.detach().numpy(), out.audio_embeds.detach().numpy(), 50.0
    )
    assert ours.item() == pytest.approx(expected, rel=1e-4)
    # HF's logits scale text->audio by logit_scale_t, and return_loss is text->audio twice.
    hf_mixed = (
        F.cross_entropy(out.logits_per_text, torch.arange(4))
        + F.cross_entropy(out.logits_per_audio, torch.arange(4))
    ) / 2
    assert not torch.isclose(ours, hf_mixed)
    assert not torch.isclose(ours, out.loss)


def test_only_logit_scale_a_is_trained_and_clamped(tiny_model_dir: Path) -> None:
    model = load_clap(tiny_model_dir).model
    prepare_logit_scales(model)
    assert model.logit_scale_a.requires_grad and not model.logit_scale_t.requires_grad
    groups = optimizer_groups(model, weight_decay=0.1)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.logit_scale_a) in no_decay and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    assert id(model.logit_scale_t) not in no_decay | {id(p) for p in groups[0]["params"]}
    with torch.no_grad():
        model.logit_scale_a.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale_a.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale_a.fill_(-1.0)
    clamp_logit_scale(model)
    assert model.logit_scale_a.item() == 0.0


def test_learning_rate_warms_up_then_follows_the_schedule() -> None:
    cosine = TrainConfig(learning_rate=1e-3, max_epochs=2, warmup_steps=4, lr_schedule="cosine")
    rates = [learning_rate_at(cosine, step, steps_per_epoch=10) for step in range(1, 21)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[4] < 1e-3 and all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[11] == pytest.approx(0.5e-3)  # halfway through the decay (step 12 of 4..20)
    constant = TrainConfig(learning_rate=1e-3, warmup_steps=2)
    assert [learning_rate_at(constant, s, 10) for s in (1, 2, 3, 30)] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-3]
    )
    with pytest.raises(TrainingError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear").validate()


def record(epoch: int, r5: float, val_loss: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, train_loss=1.0, val_loss=val_loss, metrics={"text_to_audio_recall_at_5": r5}
    )


def test_best_epoch_prefers_recall_then_lower_val_loss_then_earlier() -> None:
    history = [record(1, 0.3, 2.0), record(2, 0.5, 1.9), record(3, 0.5, 1.8), record(4, 0.4, 1.0)]
    assert best_epoch(history).epoch == 3
    assert best_epoch([record(1, 0.5, 1.0), record(2, 0.5, 1.0)]).epoch == 1
    with pytest.raises(ValueError):
        best_epoch([])


def test_early_stopping_counts_epochs_since_the_best() -> None:
    assert not should_stop([], patience=1)
    assert not should_stop([record(1, 0.3, 2.0)], patience=1)
    assert should_stop([record(1, 0.3, 2.0), record(2, 0.2, 1.0)], patience=1)
    # Same R@5 with a lower validation loss counts as an improvement.
    assert not should_stop([record(1, 0.3, 2.0), record(2, 0.3, 1.5)], patience=1)
    worse = [record(1, 0.5, 1.0), record(2, 0.4, 1.0)]
    assert not should_stop(worse, patience=2)
    assert should_stop([*worse, record(3, 0.45, 0.5)], patience=2)
    assert not should_stop([*worse, record(3, 0.6, 0.5)], patience=2)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticData:
    return write_training_dataset(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return mlflow_store(tmp_path_factory.mktemp("mlruns"))


def make_inputs(synthetic: SyntheticData, model_dir: Path, store: str, out: Path) -> TrainInputs:
    return replace(
        training_inputs(synthetic.data_dir, model_dir, store, out), registered_model=TEST_MODEL
    )


@pytest.fixture(scope="module")
def progress_messages() -> list[str]:
    return []


@pytest.fixture(scope="module")
def learned(
    synthetic: SyntheticData,
    tiny_model_dir: Path,
    store: str,
    progress_messages: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainingResult:
    inputs = make_inputs(synthetic, tiny_model_dir, store, tmp_path_factory.mktemp("learn"))
    return train(
        LEARN,
        inputs,
        dagster_run_id="dagster-run-1",
        on_progress=lambda p: progress_messages.append(p.message),
    )


# ----------------------------------------------------------------------------- the main run


def test_mlflow_run_has_per_epoch_history_params_and_checkpoints(
    learned: TrainingResult, store: str
) -> None:
    client = tracking.client(store)
    run = client.get_run(learned.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == "dagster-run-1"
    epochs = [r.epoch for r in learned.epochs]
    assert epochs == list(range(1, len(epochs) + 1))
    keys = ["train_loss", "val_loss"] + [
        f"val_{d}_recall_at_{k}" for d in ("text_to_audio", "audio_to_text") for k in (1, 5, 10)
    ]
    for key in keys:
        history = tracking.metric_history(store, learned.run_id, key)
        assert [step for step, _ in history] == epochs, key
    r5 = tracking.metric_history(store, learned.run_id, "val_text_to_audio_recall_at_5")
    assert [v for _, v in r5] == [r.val_recall_at_5 for r in learned.epochs]

    params = run.data.params
    assert params["config.learning_rate"] == "0.005" and params["config.batch_size"] == "4"
    assert params["model_source"] == learned.report.model_source
    assert params["device"] == "cpu"
    assert (params["n_train"], params["n_val"], params["n_test"]) == ("32", "16", "4")
    assert len(params["data_version_prompts"]) == 16 and len(params["data_version_waveforms"]) == 16
    assert params["git_commit"]
    assert params["best_epoch"] == str(learned.best_epoch)
    assert run.data.metrics["best_epoch"] == learned.best_epoch

    artifacts = {a.path for a in client.list_artifacts(learned.run_id)}
    assert {"checkpoints", "training_curve.png", "training.json"} <= artifacts
    logged = {a.path for a in client.list_artifacts(learned.run_id, "checkpoints")}
    wise = learned.report.wise_ft
    interpolated = {"checkpoints/wise-ft"} if wise.alpha < 1 else set()
    assert logged == {f"checkpoints/epoch-{e}" for e in epochs} | interpolated
    for r in learned.epochs:  # local save_pretrained folders: safetensors + processor
        folder = Path(r.checkpoint)
        assert folder == learned.best_checkpoint.parent / f"epoch-{r.epoch}"
        assert (folder / "model.safetensors").exists()
        assert (folder / "processor_config.json").exists()
        assert load_clap(folder).model is not None


def test_the_comparison_reads_every_name_training_writes(
    learned: TrainingResult, store: str
) -> None:
    """The reader of every run (evaluation/comparison.py) finds what a real training logged."""
    runs = collect_runs(store, "training-tests", TEST_MODEL)
    (summary,) = [r for r in runs if r.run_id == learned.run_id]
    assert summary.best_epoch == learned.best_epoch
    assert summary.n_train == 32
    assert set(summary.params) == {param for param, _ in KEY_PARAMS}
    assert summary.max_epochs == LEARN.max_epochs
    assert [p.epoch for p in summary.epochs] == [r.epoch for r in learned.epochs]
    for point, record in zip(summary.epochs, learned.epochs, strict=True):
        assert point.val_loss == pytest.approx(record.val_loss)
        assert point.val_recall == {k: record.metrics[recall_key(k)] for k in KS}
    assert summary.registered_version == learned.registered_version


def test_best_epoch_follows_the_rule_and_stopping_the_patience(
    learned: TrainingResult, store: str
) -> None:
    r5 = dict(tracking.metric_history(store, learned.run_id, "val_text_to_audio_recall_at_5"))
    loss = dict(tracking.metric_history(store, learned.run_id, "val_loss"))
    expected = max(r5, key=lambda e: (r5[e], -loss[e], -e))
    assert learned.best_epoch == expected
    assert learned.report.best_epoch == expected
    last = max(r5)
    if learned.stopped_early:
        assert last - expected == LEARN.patience
    else:
        assert last == LEARN.max_epochs and last - expected <= LEARN.patience


def test_wise_ft_scores_each_alpha_and_registers_the_best(
    learned: TrainingResult, synthetic: SyntheticData, tiny_model_dir: Path, store: str
) -> None:
    wise = learned.report.wise_ft
    assert [g.alpha for g in wise.grid] == alpha_grid(LEARN.wise_ft_steps)
    key = "text_to_audio_recall_at_5"
    assert wise.chosen == max(wise.grid, key=lambda g: (g.metrics[key], -g.val_loss, g.alpha))
    # alpha 1 is the best epoch itself, alpha 0 the pre-trained model.
    best = next(r for r in learned.epochs if r.epoch == learned.best_epoch)
    assert wise.grid[-1].metrics[key] == pytest.approx(best.val_recall_at_5)
    assert wise.grid[-1].val_loss == pytest.approx(best.val_loss, rel=1e-5)
    # Logged per alpha (step = 100 alpha), the chosen alpha as a metric and a tag.
    history = tracking.metric_history(store, learned.run_id, f"wise_ft_val_{key}")
    assert history == [(round(g.alpha * 100), g.metrics[key]) for g in wise.grid]
    run = tracking.client(store).get_run(learned.run_id)
    assert run.data.metrics["wise_ft_alpha"] == wise.alpha
    version = tracking.client(store).get_model_version(TEST_MODEL, learned.registered_version)
    assert float(version.tags[run_names.WISE_FT_ALPHA_TAG]) == wise.alpha
    assert float(version.tags[run_names.VERSION_VAL_R5_TAG]) == wise.chosen.metrics[key]
    # The registered folder holds theta(alpha) and reproduces its validation score.
    kept = load_clap(wise.checkpoint)
    if wise.alpha < 1:
        expected = interpolate(
            load_clap(tiny_model_dir).model.state_dict(),
            load_clap(learned.best_checkpoint).model.state_dict(),
            wise.alpha,
        )
        for name, tensor in kept.model.state_dict().items():
            assert torch.allclose(tensor, expected[name], atol=1e-6), name
    else:
        assert Path(wise.checkpoint) == learned.best_checkpoint
    data = _synthetic_training_data(synthetic, batch_size=LEARN.batch_size)
    features = features_for_model(kept, torch.device("cpu"))
    _, metrics = evaluate_split(
        kept.model, features, kept.tokenizer, data, "validation", LEARN.batch_size,
        torch.device("cpu"),
    )  # fmt: skip
    assert metrics[key] == pytest.approx(wise.chosen.metrics[key])


def _synthetic_training_data(synthetic: SyntheticData, batch_size: int) -> TrainingData:
    return TrainingData.load(
        synthetic.data_dir / "prompts.parquet",
        synthetic.data_dir / "waveforms",
        synthetic.data_dir / "clap.duckdb",
        split_mode="fma",
        seed=0,
        batch_size=batch_size,
    )


def test_fine_tune_beats_untrained_model_and_random(
    learned: TrainingResult, synthetic: SyntheticData, tiny_model_dir: Path
) -> None:
    data = _synthetic_training_data(synthetic, batch_size=8)
    untrained = load_clap(tiny_model_dir)
    features = features_for_model(untrained, torch.device("cpu"))
    _, before = evaluate_split(
        untrained.model, features, untrained.tokenizer, data, "validation", 8, torch.device("cpu")
    )
    best = next(r for r in learned.epochs if r.epoch == learned.best_epoch)
    # The loss falls: a change that silently stops learning turns this red.
    assert min(r.train_loss for r in learned.epochs[1:]) < learned.epochs[0].train_loss - 0.05
    n_val = len(synthetic.ids("validation"))
    baseline = max(before["text_to_audio_recall_at_5"], random_recall(5, n_val))
    assert best.val_recall_at_5 >= baseline + 0.15, (best.val_recall_at_5, before)

    # The registered checkpoint reproduces the logged validation metrics.
    tuned = load_clap(learned.best_checkpoint)
    _, after = evaluate_split(
        tuned.model, features, tuned.tokenizer, data, "validation", 8, torch.device("cpu")
    )
    # text->audio (what picks the epoch) must match exactly. audio->text is left out: several
    # synthetic clips share one identical prompt, so their scores tie exactly up to float
    # noise, and a different batch composition may flip those ties.
    t2a = {k: v for k, v in best.metrics.items() if k.startswith("text_to_audio")}
    assert {k: after[k] for k in t2a} == pytest.approx(t2a)


def test_cached_features_change_no_number(synthetic: SyntheticData, tiny_model_dir: Path) -> None:
    data = _synthetic_training_data(synthetic, batch_size=8)
    loaded = load_clap(tiny_model_dir)
    device = torch.device("cpu")
    plain = features_for_model(loaded, device)
    cached = CachedFeatures(plain, budget_mb=1024)
    args = (loaded.tokenizer, data, "validation", 8, device)
    expected = evaluate_split(loaded.model, plain, *args)
    assert evaluate_split(loaded.model, cached, *args) == expected  # fills the cache
    # One entry per validation clip, keyed by its window's position (validation: first windows).
    first_windows = data.index.positions(synthetic.ids("validation"), "first")
    assert set(cached.store) == set(first_windows.tolist())
    assert evaluate_split(loaded.model, cached, *args) == expected  # served from it
    # The budget bounds what is kept: room for 3 clips keeps 3.
    one_clip = next(iter(cached.store.values()))
    small = CachedFeatures(plain, budget_mb=0)
    small.budget_bytes = 3 * one_clip.numel() * one_clip.element_size()
    assert evaluate_split(loaded.model, small, *args) == expected
    assert len(small.store) == 3


def test_feature_cache_never_exceeds_its_budget_and_keeps_nothing_new_when_told(
    synthetic: SyntheticData, tiny_model_dir: Path
) -> None:
    data = _synthetic_training_data(synthetic, batch_size=8)
    loaded = load_clap(tiny_model_dir)
    device = torch.device("cpu")
    plain = features_for_model(loaded, device)
    args = (loaded.tokenizer, data, "validation", 8, device)
    expected = evaluate_split(loaded.model, plain, *args)
    probe = CachedFeatures(plain, budget_mb=1024)
    evaluate_split(loaded.model, probe, *args)
    clip_bytes = next(iter(probe.store.values())).nbytes
    n_val = len(synthetic.ids("validation"))
    assert n_val >= 4
    # A budget of 2.5 clips, over passes and over every split: never more than 2 stored.
    bounded = CachedFeatures(plain, budget_mb=0)
    bounded.budget_bytes = int(2.5 * clip_bytes)
    for split in ("validation", "train", "validation"):
        evaluate_split(loaded.model, bounded, loaded.tokenizer, data, split, 8, device)
        stored = sum(t.nbytes for t in bounded.store.values())
        assert stored == bounded.bytes <= bounded.budget_bytes
    assert len(bounded.store) == 2
    # The last epoch's mode: what is stored is served, nothing new is kept.
    last = CachedFeatures(plain, budget_mb=1024)
    last.keep_new = False
    assert evaluate_split(loaded.model, last, *args) == expected
    assert last.store == {} and last.bytes == 0
    last.store, last.bytes = dict(bounded.store), bounded.bytes
    assert evaluate_split(loaded.model, last, *args) == expected  # two served from the store
    assert set(last.store) == set(bounded.store)


def test_manifest_follows_the_contract(learned: TrainingResult, synthetic: SyntheticData) -> None:
    manifest = json.loads(learned.manifest_path.read_text())
    assert manifest["mlflow_run_id"] == learned.run_id
    assert manifest["device"] == "cpu"
    assert manifest["best_epoch"] == learned.best_epoch
    assert Path(manifest["best_checkpoint"]).is_absolute()
    assert (Path(manifest["best_checkpoint"]) / "config.json").exists()
    assert manifest["splits"] == {
        name: synthetic.ids(name) for name in ("train", "validation", "test")
    }
    assert manifest["registered_model"] == {
        "name": TEST_MODEL,
        "version": learned.registered_version,
        "alias": "champion",
    }
    assert manifest["config"] == LEARN.to_dict()
    metric_keys = {f"val_{k}" for k in retrieval_metrics(np.eye(3))}
    for row in manifest["epochs"]:
        assert {"epoch", "checkpoint", "train_loss", "val_loss"} | metric_keys == set(row)
        assert Path(row["checkpoint"]).exists()
    assert [row["epoch"] for row in manifest["epochs"]] == [r.epoch for r in learned.epochs]


def test_progress_reports_steps_rate_and_eta(
    learned: TrainingResult, progress_messages: list[str]
) -> None:
    messages = progress_messages
    assert any(m.startswith("data: 52 prompts, 52 waveforms, 52 usable") for m in messages)
    step_lines = [m for m in messages if " step " in m]
    assert step_lines and all("clips/s" in m and "ETA" in m for m in step_lines)
    assert any(m.startswith(f"epoch 1/{LEARN.max_epochs} step 8/8 ") for m in step_lines)
    assert any("registered as clap-fma-test" in m for m in messages)


def test_logit_scale_a_is_learned_within_the_clamp_and_scale_t_untouched(
    learned: TrainingResult, tiny_model_dir: Path, store: str
) -> None:
    initial = load_clap(tiny_model_dir).model
    for r in learned.epochs:
        assert 0.0 <= r.logit_scale_a <= LOGIT_SCALE_MAX
        assert r.logit_scale_t == pytest.approx(initial.logit_scale_t.item())
    assert learned.epochs[0].logit_scale_a != pytest.approx(initial.logit_scale_a.item())
    logged = tracking.metric_history(store, learned.run_id, "logit_scale_a")
    assert [v for _, v in logged] == pytest.approx([r.logit_scale_a for r in learned.epochs])


# ----------------------------------------------------------------------------- registry


def test_worse_second_run_becomes_challenger(
    learned: TrainingResult,
    synthetic: SyntheticData,
    tiny_model_dir: Path,
    store: str,
    tmp_path: Path,
) -> None:
    # A learning rate too small to move the weights: the untrained model's recall.
    worse_config = replace(
        LEARN, batch_size=16, learning_rate=1e-12, max_epochs=1, log_checkpoints=False
    )
    worse = train(worse_config, make_inputs(synthetic, tiny_model_dir, store, tmp_path))
    best_worse = next(r for r in worse.epochs if r.epoch == worse.best_epoch)
    assert best_worse.val_recall_at_5 < next(
        r.val_recall_at_5 for r in learned.epochs if r.epoch == learned.best_epoch
    )
    assert worse.alias == tracking.CHALLENGER
    client = tracking.client(store)
    champion = client.get_model_version_by_alias("clap-fma-test", tracking.CHAMPION)
    challenger = client.get_model_version_by_alias("clap-fma-test", tracking.CHALLENGER)
    assert (str(champion.version), champion.run_id) == (learned.registered_version, learned.run_id)
    assert (str(challenger.version), challenger.run_id) == (worse.registered_version, worse.run_id)
    assert (
        champion.tags[run_names.VALIDATION_FINGERPRINT_TAG]
        == challenger.tags[run_names.VALIDATION_FINGERPRINT_TAG]
    )
    # Consumers (search, evaluation) get the champion's checkpoint folder: WiSE-FT's weights.
    resolved = tracking.resolve_champion(store, name="clap-fma-test")
    assert resolved.local_dir == Path(learned.report.wise_ft.checkpoint)
    assert resolved.version == learned.registered_version


def test_champion_is_rescored_when_the_validation_set_changed(
    learned: TrainingResult, synthetic: SyntheticData, store: str
) -> None:
    data = _synthetic_training_data(synthetic, batch_size=LEARN.batch_size)
    scored: list[Path] = []

    def score(folder: Path) -> float:
        scored.append(folder)
        loaded = load_clap(folder)
        features = features_for_model(loaded, torch.device("cpu"))
        _, metrics = evaluate_split(
            loaded.model, features, loaded.tokenizer, data, "validation", LEARN.batch_size,
            torch.device("cpu"),
        )  # fmt: skip
        return metrics["text_to_audio_recall_at_5"]

    client = tracking.client(store)
    registered = learned.report.wise_ft.chosen  # the registered weights: WiSE-FT's
    # Same validation set: the tagged value, no re-scoring.
    same = data.validation_fingerprint()
    champion, r5 = champion_recall(client, TEST_MODEL, same, score, tracking_uri=store)
    assert str(champion.version) == learned.registered_version
    assert (r5, scored) == (registered.metrics["text_to_audio_recall_at_5"], [])
    # Another validation set (new tracks): the champion's checkpoint is scored on it.
    _, r5 = champion_recall(client, TEST_MODEL, "other", score, tracking_uri=store)
    assert scored == [Path(learned.report.wise_ft.checkpoint)]
    # here the set is in fact the same
    assert r5 == pytest.approx(registered.metrics["text_to_audio_recall_at_5"])
    assert champion_recall(client, "no-such-model", same, score) == (None, None)


# ----------------------------------------------------------------------------- resume, faults


class SimulatedKill(Exception):
    pass


def test_reproducible_and_resumes_after_a_kill(
    learned: TrainingResult, synthetic: SyntheticData, tiny_model_dir: Path, store: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The same config as `learned`, killed after epoch 1, then started again."""
    inputs = make_inputs(synthetic, tiny_model_dir, store, tmp_path)

    def kill_after_epoch_1(r: EpochRecord) -> None:
        if r.epoch == 1:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        train(
            LEARN,
            inputs,
            dagster_run_id="first",
            hooks=TrainingHooks(after_epoch=kill_after_epoch_1),
        )
    client = tracking.client(store)
    (state_file,) = inputs.checkpoints_dir.glob("*/resume.json")
    killed_run = state_file.parent.name
    state = json.loads(state_file.read_text())
    assert (state["last_epoch"], state["tensors"]) == (1, "resume-state-epoch-1.pt")
    assert sorted(p.name for p in state_file.parent.glob("*.pt")) == ["resume-state-epoch-1.pt"]
    assert client.get_run(killed_run).info.status == "FAILED"
    assert not inputs.manifest_path.exists()

    resumed = train(LEARN, inputs, dagster_run_id="second")
    assert resumed.run_id == killed_run  # the same MLflow run continues
    assert resumed.resumed_from_epoch == 1
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_ids"] == "first,second"
    epochs = [r.epoch for r in resumed.epochs]
    assert [s for s, _ in tracking.metric_history(store, killed_run, "train_loss")] == epochs
    # Same data, config and seed on CPU -> the same numbers, killed or not.
    for a, b in zip(learned.epochs, resumed.epochs, strict=True):
        assert (a.epoch, a.train_loss, a.val_loss, a.metrics) == (
            b.epoch,
            b.train_loss,
            b.val_loss,
            b.metrics,
        )
    assert resumed.best_epoch == learned.best_epoch
    assert json.loads(state_file.read_text())["status"] == "completed"
    assert list(state_file.parent.glob("*.pt")) == []  # optimizer state removed when done
    # A tie with the champion does not take its place.
    assert resumed.alias == tracking.CHALLENGER


def test_nan_loss_stops_marks_the_run_failed_and_keeps_the_last_checkpoint(
    synthetic: SyntheticData, tiny_model_dir: Path, store: str, tmp_path: Path
) -> None:
    config = replace(QUICK, max_epochs=3)
    inputs = replace(
        make_inputs(synthetic, tiny_model_dir, store, tmp_path), registered_model="clap-fma-nan"
    )

    def poison(epoch: int, step: int, model: torch.nn.Module) -> None:
        if (epoch, step) == (2, 2):
            with torch.no_grad():
                model.audio_projection.linear1.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2") as err:
        train(config, inputs, hooks=TrainingHooks(before_step=poison))
    assert "FAILED" in str(err.value)
    (run_dir,) = inputs.checkpoints_dir.iterdir()
    run = tracking.client(store).get_run(run_dir.name)
    assert run.info.status == "FAILED"
    assert "epoch 2, step 2" in run.data.tags["failure"]
    assert (run_dir / "epoch-1" / "model.safetensors").exists()
    assert not (run_dir / "epoch-2").exists()
    assert [s for s, _ in tracking.metric_history(store, run_dir.name, "val_loss")] == [1]
    assert tracking.client(store).search_model_versions("name='clap-fma-nan'") == []
    assert not inputs.manifest_path.exists()


def test_too_few_clips_is_a_clear_error(
    synthetic: SyntheticData, tiny_model_dir: Path, store: str, tmp_path: Path
) -> None:
    with pytest.raises(TrainingDataError, match=r"32 < batch_size 64 .*32/16/4"):
        train(
            replace(QUICK, batch_size=64), make_inputs(synthetic, tiny_model_dir, store, tmp_path)
        )


def test_command_line(
    synthetic: SyntheticData,
    tiny_model_dir: Path,
    store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--batch-size", "--learning-rate", "--max-epochs", "--split", "--no-resume"):
        assert option in usage

    monkeypatch.setenv("CLAP_DATA_DIR", str(synthetic.data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("CLAP_MODEL", str(tmp_path / "no-such-model"))
    assert train_main(["--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "CLAP_MODEL" in err and "clap-pipeline tiny-model" in err

    monkeypatch.setenv("CLAP_MODEL", str(tiny_model_dir))
    assert train_main(["--batch-size", "64"]) == 2
    assert "too few training clips" in capsys.readouterr().err


def test_precision_is_checked_before_a_run_exists(
    synthetic: SyntheticData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match=r"precision must be one of .*got 'fp16'"):
        TrainConfig(precision="fp16").validate()
    store = mlflow_store(tmp_path / "mlruns")
    inputs = make_inputs(synthetic, tiny_model_dir, store, tmp_path / "out")
    config = replace(LEARN, precision="bf16", device="cpu")
    with pytest.raises(TrainingError, match=r"precision='bf16' needs a CUDA card.*cpu"):
        train(config, inputs)
    experiment = tracking.client(store).get_experiment_by_name(inputs.experiment)
    assert experiment is None or not tracking.client(store).search_runs([experiment.experiment_id])
    # On CPU, auto and fp32 both mean no autocast.
    for precision in ("auto", "fp32"):
        assert _autocast(torch.device("cpu"), precision) is contextlib.nullcontext


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    ],
    ids=["cuda", "mps"],
)
def test_out_of_memory_suggests_a_smaller_batch(
    error: Exception, synthetic: SyntheticData, tiny_model_dir: Path, store: str, tmp_path: Path
) -> None:
    def out_of_memory(epoch: int, step: int, model: torch.nn.Module) -> None:
        raise error

    inputs = make_inputs(synthetic, tiny_model_dir, store, tmp_path)
    with pytest.raises(TrainingError, match=r"batch_size=16: lower batch_size \(e\.g\. 8\)"):
        train(QUICK, inputs, hooks=TrainingHooks(before_step=out_of_memory))
    (run_dir,) = inputs.checkpoints_dir.iterdir()
    assert tracking.client(store).get_run(run_dir.name).info.status == "FAILED"
