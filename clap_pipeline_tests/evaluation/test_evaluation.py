"""Evaluation end to end on a small synthetic setup (tiny CLAPs, real Parquet/DuckDB/MLflow)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from clap_pipeline import tracking
from clap_pipeline.cli.train import evaluate_main
from clap_pipeline.config import Settings
from clap_pipeline.evaluation.checks import beats_random, range_problems
from clap_pipeline.evaluation.evaluate import evaluate
from clap_pipeline.evaluation.genres import GENRE_PROMPT
from clap_pipeline.evaluation.inputs import EvalConfig, EvalInputs, EvaluationError, load_manifest
from clap_pipeline.evaluation.mlflow_log import mlflow_metrics
from clap_pipeline.evaluation.qualitative import sample_epochs
from clap_pipeline.evaluation.render import format_evaluation_table, verdict_lines
from clap_pipeline.evaluation.report import EvaluationReport, Interval, load_report
from clap_pipeline.metrics import (
    KS,
    METRIC_NAMES,
    metrics_from_ranks,
    random_expected_metrics,
    retrieval_metrics,
)
from clap_pipeline.model.clap import audio_embeddings, load_clap, text_embeddings, tokenize
from clap_pipeline_tests.evaluation_fixtures import (
    NO_GENRE,
    TEST_IDS,
    VALIDATION_IDS,
    EvalSetup,
    build_evaluation_setup,
)

FAST = EvalConfig(batch_size=5, n_bootstrap=300, random_rounds=300, seed=0)


def inputs_for(setup: EvalSetup) -> EvalInputs:
    settings = Settings.build(data_dir=setup.data_dir, mlflow_tracking_uri=setup.tracking_uri)
    return EvalInputs.from_settings(settings)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> EvalSetup:
    return build_evaluation_setup(tmp_path_factory.mktemp("evaluation"), tiny_model_dir)


@pytest.fixture(scope="module")
def evaluated(setup: EvalSetup) -> tuple[EvaluationReport, list[str]]:
    messages: list[str] = []
    report = evaluate(FAST, inputs_for(setup), log=messages.append)
    return report, messages


@pytest.fixture(scope="module")
def reference_features(setup: EvalSetup, tiny_model_dir: Path) -> dict[int, torch.Tensor]:
    """Independent path: the whole dataset read at once, the numpy feature extractor clip by
    clip (all tiny models share the hub's unfused extractor settings)."""
    extractor = load_clap(tiny_model_dir).feature_extractor
    table = ds.dataset(setup.data_dir / "waveforms", format="parquet").to_table()
    ids = table.column("track_id").to_pylist()
    waves = table.column("input_values").to_pylist()
    return {
        tid: extractor([np.asarray(wave, np.float32)], sampling_rate=48_000, return_tensors="pt")[
            "input_features"
        ]
        for tid, wave in zip(ids, waves, strict=True)
        if tid in TEST_IDS
    }


def reference_embeddings(
    model_dir: Path, features: dict[int, torch.Tensor], prompts: list[str], track_ids: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    clap = load_clap(model_dir)
    model = clap.model.eval()
    with torch.no_grad():
        audio = audio_embeddings(model, torch.cat([features[t] for t in track_ids]))
        text = text_embeddings(model, tokenize(clap.tokenizer, prompts))
    return text.numpy(), audio.numpy()


def metric_bounds(sim: np.ndarray, eps: float) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics at the best and worst ranks consistent with scores known to within ``eps``.

    The pipeline's torch log-mel and the numpy extractor differ by ~1e-7 in cosine; a
    tiny random CLAP can have near-ties that small, so exact rank equality is not a
    given. Every metric is monotone in each rank, so the pipeline's value must lie
    between the metrics of these two rank vectors (equal when nothing is that close).
    """
    out = []
    for strict in (True, False):
        values = {}
        for direction, m in (("text_to_audio", sim), ("audio_to_text", sim.T)):
            match = np.diag(m)[:, None]
            above = m > match + eps if strict else m >= match - eps
            np.fill_diagonal(above, False)
            for name, value in metrics_from_ranks(above.sum(axis=1)).items():
                values[f"{direction}_{name}"] = value
        out.append(values)
    return out[0], out[1]


def test_report_structure_values_in_range_and_file_on_disk(
    setup: EvalSetup, evaluated: tuple[EvaluationReport, list[str]]
) -> None:
    report, _ = evaluated
    assert report.mlflow_run_id == setup.run_id
    assert report.model_source == str(setup.model_source)
    assert report.best_epoch == 3
    assert set(report.splits) == {"test", "validation"}
    expected_keys = set(retrieval_metrics(np.eye(3)))
    for split, ids in (("test", TEST_IDS), ("validation", VALIDATION_IDS)):
        block = report.splits[split]
        n = len(ids)
        assert (block.n, block.n_expected, block.missing_track_ids) == (n, n, [])
        assert set(block.models) == {"zero_shot", "fine_tuned"}
        for model in block.models.values():
            assert set(model.metrics) == expected_keys
            for key, stat in model.metrics.items():
                assert stat.ci_low <= stat.value <= stat.ci_high, key
                if "rank" in key:
                    assert 1 <= stat.value <= n
                else:
                    assert stat.ci_low >= 0 and stat.ci_high <= 1
        exact = random_expected_metrics(n)
        for k in KS:
            assert block.random.exact[f"text_to_audio_recall_at_{k}"] == min(k, n) / n
        for key, stat in block.random.empirical.items():
            metric = key.split("_", 3)[-1]
            assert stat.ci_low <= exact[metric] <= stat.ci_high, key
    assert range_problems(report, load_manifest(setup.manifest_path)) == []
    on_disk = json.loads((setup.data_dir / "reports" / "evaluation.json").read_text())
    assert on_disk == report.to_json()  # what the file holds is the report, field for field
    assert EvaluationReport.from_json(on_disk) == report
    assert load_report(setup.data_dir / "reports" / "evaluation.json") == report
    # The file keeps its long-standing shape: a model's metrics sit next to its source.
    tuned = on_disk["splits"]["test"]["models"]["fine_tuned"]
    assert tuned["source"] == report.best_checkpoint
    assert tuned["text_to_audio_recall_at_5"] == {
        "value": report.splits["test"].stat("fine_tuned", "text_to_audio_recall_at_5").value,
        "ci_low": report.splits["test"].stat("fine_tuned", "text_to_audio_recall_at_5").ci_low,
        "ci_high": report.splits["test"].stat("fine_tuned", "text_to_audio_recall_at_5").ci_high,
    }
    leftovers = [p.name for p in (setup.data_dir / "reports").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_metrics_agree_with_an_independent_computation(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    reference_features: dict[int, torch.Tensor],
) -> None:
    report, _ = evaluated
    prompts = [setup.prompt_of[t] for t in TEST_IDS]
    sources = {"zero_shot": setup.model_source, "fine_tuned": setup.checkpoints[3]}
    n_exact = 0
    for model_key, model_dir in sources.items():
        text, audio = reference_embeddings(model_dir, reference_features, prompts, TEST_IDS)
        best, worst = metric_bounds(text.astype(np.float64) @ audio.T, eps=1e-5)
        got = report.splits["test"].models[model_key].metrics
        for key in best:
            low, high = sorted((best[key], worst[key]))
            assert low - 1e-9 <= got[key].value <= high + 1e-9, (model_key, key)
            n_exact += low == high
    assert n_exact >= 12  # most metrics are pinned exactly, not just bracketed
    # The two models are different networks: their rankings differ somewhere.
    test = report.splits["test"]
    assert any(test.stat("zero_shot", k).value != test.stat("fine_tuned", k).value for k in best)


def test_genre_search_matches_an_independent_ranking(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    reference_features: dict[int, torch.Tensor],
) -> None:
    report, _ = evaluated
    search = report.genre_search
    test = search.splits["test"]
    labels = [setup.genre_of[t] for t in TEST_IDS]
    expected_genres = sorted(
        g for g in set(labels) - {None} if labels.count(g) >= search.min_tracks
    )
    assert test.genres == expected_genres and test.n == len(TEST_IDS)
    queries = [search.queries["genre_music"].format(genre=g) for g in expected_genres]
    query_text, audio = reference_embeddings(
        setup.checkpoints[3], reference_features, queries, TEST_IDS
    )
    tuned = test.models["fine_tuned"]["genre_music"]
    for g, genre in enumerate(expected_genres):
        order = np.argsort(-(audio @ query_text[g]), kind="stable")
        hits = [labels[i] == genre for i in order]
        k = min(search.k, len(hits))
        precision = sum(hits[:k]) / k
        ap = np.mean([sum(hits[: r + 1]) / (r + 1) for r, hit in enumerate(hits) if hit])
        assert tuned.per_genre[genre]["precision_at_10"] == pytest.approx(precision)
        assert tuned.per_genre[genre]["average_precision"] == pytest.approx(ap)
    p10 = tuned.scores["precision_at_10"]
    assert p10.value == pytest.approx(
        np.mean([v["precision_at_10"] for v in tuned.per_genre.values()])
    )
    assert p10.ci_low <= p10.value <= p10.ci_high
    shares = [labels.count(g) / len(labels) for g in expected_genres]
    assert test.prior.scores["precision_at_10"].value == pytest.approx(np.mean(shares))
    assert set(test.models) == {"zero_shot", "fine_tuned"}
    assert set(test.models["zero_shot"]) == set(search.queries)
    # Every prompt of the fixture is distinct: nothing to merge, the strict numbers stand.
    merged = report.splits["test"].identical_prompts
    assert (merged.n_clips_sharing, merged.models) == (0, {})


def test_more_like_this_with_and_without_the_artist_matches_a_direct_ranking(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    reference_features: dict[int, torch.Tensor],
) -> None:
    report, _ = evaluated
    similarity = report.similarity
    test = similarity.splits["test"]
    assert test.n_queries == len([t for t in TEST_IDS if setup.genre_of[t]])
    assert set(test.models) == {"zero_shot", "fine_tuned"}
    _, audio = reference_embeddings(setup.checkpoints[3], reference_features, ["x"], TEST_IDS)
    pairs = 0
    for kind in ("all", "other_artists"):
        precisions, shares = [], []
        for q, track in enumerate(TEST_IDS):
            genre, artist = setup.genre_of[track], setup.artist_of[track]
            if genre is None:
                continue
            pool = [
                i
                for i, t in enumerate(TEST_IDS)
                if i != q and (kind == "all" or artist is None or setup.artist_of[t] != artist)
            ]
            pairs += (kind == "all") * sum(
                1
                for t in TEST_IDS
                if t != track and artist is not None and setup.artist_of[t] == artist
            )
            order = sorted(pool, key=lambda i: -float(audio[i] @ audio[q]))
            hits = [setup.genre_of[TEST_IDS[i]] == genre for i in order]
            precisions.append(sum(hits[:10]) / min(10, len(hits)))
            shares.append(sum(hits) / len(hits))
        tuned = test.models["fine_tuned"][kind]
        assert tuned.value == pytest.approx(np.mean(precisions), abs=1e-9)
        assert tuned.ci_low <= tuned.value <= tuned.ci_high
        assert test.prior[kind] == pytest.approx(np.mean(shares))
    assert test.same_artist_pairs == pairs > 0
    # Same-artist clips share the genre in this collection: leaving them out lowers the prior.
    assert test.prior["other_artists"] < test.prior["all"]
    logged = tracking.client(setup.tracking_uri).get_run(setup.run_id).data.metrics
    name = "eval_test_audio_to_audio_genre_precision_at_10"
    assert logged[name] == pytest.approx(test.models["fine_tuned"]["all"].value)
    assert logged[f"{name}_other_artists"] == pytest.approx(tuned.value)
    assert logged[name.replace("eval_", "eval_prior_")] == pytest.approx(test.prior["all"])
    table = format_evaluation_table(report)
    assert "more like this (audio->audio), test split" in table
    assert any("'more like this'" in line and "artist" in line for line in verdict_lines(report))


def test_genre_classification_over_the_genres_present(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    reference_features: dict[int, torch.Tensor],
) -> None:
    report, _ = evaluated
    genre = report.genre
    present = {setup.genre_of[t] for t in TEST_IDS + VALIDATION_IDS} - {None}
    assert genre.genres == sorted(present)
    assert genre.prompt_template == GENRE_PROMPT
    labelled = [t for t in TEST_IDS if t not in NO_GENRE]
    test = genre.splits["test"]
    assert (test.n, test.n_without_genre) == (len(labelled), len(TEST_IDS) - len(labelled))
    assert test.chance_accuracy == pytest.approx(1 / len(present))
    # Independent prediction with the reference embeddings of the fine-tuned model.
    genre_prompts = [GENRE_PROMPT.format(genre=g) for g in genre.genres]
    genre_text, audio = reference_embeddings(
        setup.checkpoints[3], reference_features, genre_prompts, labelled
    )
    genre_scores = np.sort(audio @ genre_text.T, axis=1)
    assert (genre_scores[:, -1] - genre_scores[:, -2]).min() > 1e-5  # clear decisions
    predicted = np.argmax(audio @ genre_text.T, axis=1)
    truth = np.array([genre.genres.index(setup.genre_of[t]) for t in labelled])
    tuned = test.models["fine_tuned"]
    assert tuned.accuracy == pytest.approx(float(np.mean(predicted == truth)))
    confusion = np.array(tuned.confusion)
    expected_confusion = np.zeros_like(confusion)
    np.add.at(expected_confusion, (truth, predicted), 1)
    np.testing.assert_array_equal(confusion, expected_confusion)
    for model in test.models.values():
        c = np.array(model.confusion)
        assert c.sum() == len(labelled)
        assert np.trace(c) / c.sum() == pytest.approx(model.accuracy)
        assert model.ci_low <= model.accuracy <= model.ci_high


def test_qualitative_table_per_kept_epoch(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    reference_features: dict[int, torch.Tensor],
) -> None:
    report, _ = evaluated
    qual = report.qualitative
    assert qual.split == "test" and qual.n_epochs == 3
    assert [(c.name, c.kept) for c in qual.columns] == [
        ("zero-shot", True),
        ("epoch 1", True),
        ("epoch 2", False),
        ("epoch 3 (best)", True),
    ]
    assert [r.track_id for r in qual.rows] == TEST_IDS[:10]
    # Epoch 1 checks the per-epoch path against the reference embeddings of its checkpoint.
    prompts = [setup.prompt_of[t] for t in TEST_IDS]
    text, audio = reference_embeddings(setup.checkpoints[1], reference_features, prompts, TEST_IDS)
    scores = audio[:10] @ text.T
    for i, row in enumerate(qual.rows):
        assert row.prompt == setup.prompt_of[row.track_id]
        assert row.results["epoch 2"] is None
        epoch1 = row.results["epoch 1"]
        j = TEST_IDS.index(epoch1.top1_track_id)
        assert epoch1.score == pytest.approx(scores[i, j], abs=1e-5)
        assert scores[i, j] >= scores[i].max() - 1e-5  # the top-1 (up to feature-path noise)
        for name in ("zero-shot", "epoch 1", "epoch 3 (best)"):
            result = row.results[name]
            assert result.top1_prompt == setup.prompt_of[result.top1_track_id]
            assert result.correct == (result.top1_prompt == row.prompt)


def test_metrics_are_logged_to_the_training_run(
    setup: EvalSetup, evaluated: tuple[EvaluationReport, list[str]]
) -> None:
    report, messages = evaluated
    client = tracking.client(setup.tracking_uri)
    logged = client.get_run(setup.run_id).data.metrics
    test = report.splits["test"]
    tuned = test.models["fine_tuned"].metrics
    for k in KS:
        t2a, a2t = f"text_to_audio_recall_at_{k}", f"audio_to_text_recall_at_{k}"
        assert logged[f"eval_test_{t2a}"] == tuned[t2a].value
        assert logged[f"eval_test_{a2t}"] == pytest.approx(tuned[a2t].value)
        assert logged[f"eval_random_test_{t2a}"] == pytest.approx(min(k, 12) / 12)
        assert (
            logged[f"eval_val_{t2a}"] == report.splits["validation"].stat("fine_tuned", t2a).value
        )
    for name in METRIC_NAMES:
        key = f"text_to_audio_{name}"
        assert logged[f"eval_zeroshot_test_{key}"] == pytest.approx(
            test.stat("zero_shot", key).value
        )
        assert logged[f"eval_test_{key}_ci_high"] == pytest.approx(tuned[key].ci_high)
    assert logged["eval_test_n"] == 12 and logged["eval_val_n"] == 6
    assert logged["eval_test_genre_accuracy"] == pytest.approx(
        report.genre.splits["test"].models["fine_tuned"].accuracy
    )
    assert logged["val_text_to_audio_recall_at_5"] == 0.5  # training's own metric untouched
    # One scheme: every evaluation metric is eval_*, none uses training's other split name.
    assert set(report.mlflow.metrics) == set(mlflow_metrics(report)) <= set(logged)
    assert all(m.startswith("eval_") and "validation" not in m for m in report.mlflow.metrics)
    history = client.get_metric_history(setup.run_id, "val_text_to_audio_recall_at_5")
    assert [m.value for m in history] == [0.5]  # evaluation wrote nothing into it
    artifacts = {a.path for a in client.list_artifacts(setup.run_id, "evaluation")}
    assert artifacts == {"evaluation/evaluation.json", "evaluation/evaluation_chart.png"}
    assert any("logged" in m and setup.run_id in m for m in messages)
    assert any("clips/s" in m and "ETA" in m for m in messages)


def test_terminal_table_and_show_command(
    setup: EvalSetup,
    evaluated: tuple[EvaluationReport, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    report, _ = evaluated
    table = format_evaluation_table(report)
    lines = table.splitlines()
    assert "test split (N = 12 of 12)" in table and "validation split (N = 6 of 6)" in table
    r1 = report.splits["test"].stat("fine_tuned", "text_to_audio_recall_at_1")
    t2a_r1 = next(line for line in lines if "text->audio  R@1 " in line)
    assert f"{r1.value:.3f} [{r1.ci_low:.3f}, {r1.ci_high:.3f}]" in t2a_r1
    assert f"{1 / 12:.3f}" in t2a_r1  # random k/N
    assert "genre classification" in table
    ok, detail = beats_random(report)
    assert ("OK: " if ok else "WARNING: ") + detail in lines
    assert "genre search, test split" in table
    # The verdict closes the table.
    verdict = verdict_lines(report)
    assert lines[-len(verdict) :] == verdict
    assert verdict[0].startswith("Verdict on the test split (12 clips")
    assert any("searching '<genre> music'" in line for line in verdict)

    assert evaluate_main(["show", "--data-dir", str(setup.data_dir)]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
    assert evaluate_main(["show", "--data-dir", str(tmp_path)]) == 2
    assert "materialize the `evaluation` asset" in capsys.readouterr().err
    # The package runs as a command too (what scripts/demo.sh calls).
    shown = subprocess.run(
        [sys.executable, "-m", "clap_pipeline.evaluation", "show", "--data-dir", str(setup.data_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout.strip() == table.strip()


def edited(
    report: EvaluationReport, split: str, model: str, key: str, **change: float
) -> EvaluationReport:
    """A copy of ``report`` with one metric's value or bound changed."""
    out = copy.deepcopy(report)
    metrics = out.splits[split].models[model].metrics
    metrics[key] = replace(metrics[key], **change)
    return out


def test_beats_random_and_range_problems_on_edited_reports(
    setup: EvalSetup, evaluated: tuple[EvaluationReport, list[str]]
) -> None:
    report, _ = evaluated
    manifest = load_manifest(setup.manifest_path)
    r5 = "text_to_audio_recall_at_5"
    better = edited(report, "test", "fine_tuned", r5, value=0.9)
    assert beats_random(better)[0] is True
    ok, detail = beats_random(edited(report, "test", "fine_tuned", r5, value=5 / 12))
    assert ok is False and "does NOT beat random 0.417" in detail

    broken = edited(report, "validation", "zero_shot", "audio_to_text_map_at_10", ci_high=1.5)
    broken = edited(broken, "test", "fine_tuned", "text_to_audio_mean_rank", value=13.0)
    assert sorted(range_problems(broken, manifest)) == [
        "test fine_tuned text_to_audio_mean_rank value = 13.0 outside [1.0, 12.0]",
        "validation zero_shot audio_to_text_map_at_10 ci_high = 1.5 outside [0.0, 1.0]",
    ]
    stale = replace(
        manifest,
        mlflow_run_id="another-run",
        splits={**manifest.splits, "test": TEST_IDS[:-1]},
    )
    problems = range_problems(report, stale)
    assert len(problems) == 2
    assert problems[0].startswith(f"report is for run {setup.run_id}, training.json for another")
    assert problems[1] == "test N = 12 but the test split has 11 clips"


def test_a_test_clip_without_waveform_is_reported_not_hidden(
    setup: EvalSetup, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(setup.data_dir, data_dir, ignore=shutil.ignore_patterns("checkpoints"))
    path = data_dir / "waveforms" / "001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.not_equal(table.column("track_id"), 1004)), path)
    config = EvalConfig(
        n_bootstrap=50, random_rounds=50, include_validation=False, qualitative_clips=0,
        log_to_mlflow=False,
    )  # fmt: skip
    settings = Settings.build(data_dir=data_dir, mlflow_tracking_uri=setup.tracking_uri)
    report = evaluate(config, EvalInputs.from_settings(settings))
    test = report.splits["test"]
    assert (test.n, test.n_expected, test.missing_track_ids) == (11, 12, [1004])
    assert test.random.exact["text_to_audio_recall_at_1"] == pytest.approx(1 / 11)
    assert "validation" not in report.splits and report.mlflow is None
    assert "mlflow" not in json.loads((data_dir / "reports" / "evaluation.json").read_text())
    assert report.qualitative.rows == []
    problems = range_problems(report, load_manifest(data_dir / "reports" / "training.json"))
    assert problems == ["test N = 11 but the test split has 12 clips"]


def test_clear_errors_for_missing_or_inconsistent_inputs(setup: EvalSetup, tmp_path: Path) -> None:
    inputs = inputs_for(setup)

    with pytest.raises(EvaluationError, match="materialize the `clap_model` asset"):
        evaluate(FAST, replace(inputs, manifest_path=tmp_path / "training.json"))

    manifest = json.loads(setup.manifest_path.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**manifest, "best_checkpoint": str(tmp_path / "gone")}))
    with pytest.raises(EvaluationError, match=r"best_checkpoint .*gone is not a save_pretrained"):
        evaluate(FAST, replace(inputs, manifest_path=bad))
    bad.write_text(json.dumps({k: v for k, v in manifest.items() if k != "splits"}))
    with pytest.raises(EvaluationError, match=r"lacks key\(s\) \['splits'\]"):
        evaluate(FAST, replace(inputs, manifest_path=bad))

    unknown_run = "0" * 32  # e.g. MLFLOW_TRACKING_URI points at another store than training's
    bad.write_text(json.dumps({**manifest, "mlflow_run_id": unknown_run}))
    with pytest.raises(EvaluationError, match=rf"MLflow run {unknown_run} .* not in the tracking"):
        evaluate(FAST, replace(inputs, manifest_path=bad))
    with pytest.raises(EvaluationError, match="batch_size must be >= 1"):
        evaluate(EvalConfig(batch_size=0), inputs)
    with pytest.raises(EvaluationError, match="materialize the `waveforms` asset"):
        evaluate(FAST, replace(inputs, waveforms_dir=tmp_path / "none"))


def test_empty_test_split_of_the_80_20_recipe_evaluates_validation(
    setup: EvalSetup, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(setup.data_dir, data_dir, ignore=shutil.ignore_patterns("checkpoints"))
    manifest_path = data_dir / "reports" / "training.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"] = {"train": [], "validation": VALIDATION_IDS, "test": []}
    manifest_path.write_text(json.dumps(manifest))
    settings = Settings.build(data_dir=data_dir, mlflow_tracking_uri=setup.tracking_uri)
    config = EvalConfig(n_bootstrap=50, random_rounds=50, qualitative_clips=2, log_to_mlflow=False)
    report = evaluate(config, EvalInputs.from_settings(settings))
    assert report.splits["test"].n == 0 and report.splits["test"].models == {}
    assert set(report.splits["validation"].models) == {"zero_shot", "fine_tuned"}
    assert report.qualitative.split == "validation"
    assert [r.track_id for r in report.qualitative.rows] == VALIDATION_IDS[:2]
    assert beats_random(report) == (False, "no test clips: the split is empty, nothing to compare")
    assert range_problems(report, load_manifest(manifest_path)) == []
    table = format_evaluation_table(report)
    assert "test split (N = 0 of 0)\n  (no clips)" in table
    assert "validation split (N = 6 of 6)" in table


def test_qualitative_epochs_are_sampled_first_best_last_and_between() -> None:
    assert sample_epochs([1, 2, 3], best=3) == [1, 2, 3]
    forty = sample_epochs(list(range(1, 41)), best=17)
    assert len(forty) == 6 and {1, 17, 40} <= set(forty)
    assert forty == sorted(forty) and len(set(forty)) == 6
    # A best epoch missing from the per-epoch list is still shown.
    assert 9 in sample_epochs(list(range(1, 8)), best=9)


def test_report_json_round_trip_and_shape_errors(
    evaluated: tuple[EvaluationReport, list[str]], tmp_path: Path
) -> None:
    report, _ = evaluated
    path = report.write(tmp_path / "evaluation.json")
    assert load_report(path) == report
    assert isinstance(
        load_report(path).splits["test"].stat("zero_shot", "text_to_audio_recall_at_1"), Interval
    )
    broken = report.to_json()
    del broken["splits"]["test"]["random"]
    path.write_text(json.dumps(broken))
    with pytest.raises(EvaluationError, match=r"does not match the report's shape.*re-materialize"):
        load_report(path)
    path.write_text("{")
    with pytest.raises(EvaluationError, match="is not valid JSON"):
        load_report(path)
