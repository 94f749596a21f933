"""Moment accuracy: the best window of a track for "<genre> music" inside that genre's section,
alone and in the evaluation of a sectioned demo collection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.config import Settings
from clap_pipeline.evaluation.evaluate import evaluate
from clap_pipeline.evaluation.inputs import WISE_FT, EvalConfig, EvalInputs
from clap_pipeline.evaluation.mlflow_log import mlflow_metrics
from clap_pipeline.evaluation.moments import MOMENT_QUERY, moment_accuracy
from clap_pipeline.evaluation.render import format_evaluation_table, verdict_lines
from clap_pipeline.evaluation.report import load_report
from clap_pipeline.model.clap import load_clap, model_fingerprint
from clap_pipeline.search.text_encoder import encode_query
from clap_pipeline.sections import SECTIONS_NAME, Section, sections_csv_text
from clap_pipeline.window_embeddings import WindowEmbeddings, l2_normalise, read_store
from clap_pipeline_tests.evaluation_fixtures import (
    TEST_IDS,
    EvalSetup,
    build_evaluation_setup,
    write_sectioned_tracks,
)

DIM = 16
GENRES = ["Folk", "Rock", "Jazz"]


def sectioned_windows(n_tracks: int, seed: int) -> tuple[WindowEmbeddings, list[Section]]:
    """30-s tracks: 3 windows of one genre, then 3 of another; window = genre + noise."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(np.eye(DIM, dtype=np.float32)[: len(GENRES)])
    ids, starts, rows, sections = [], [], [], []
    for t in range(n_tracks):
        a, b = rng.choice(len(GENRES), 2, replace=False)
        for w in range(6):
            rows.append(centres[a if w < 3 else b] + 0.3 * rng.standard_normal(DIM))
            ids.append(t)
            starts.append(5.0 * w)
        sections += [Section(t, 0, 15, GENRES[a]), Section(t, 15, 30, GENRES[b])]
    start = np.array(starts)
    emb = l2_normalise(np.array(rows, dtype=np.float32))
    return WindowEmbeddings(np.array(ids), start, start + 5, emb), sections


def genre_encoder(texts: list[str]) -> np.ndarray:
    """A text encoder that knows the genres (as a trained model would)."""
    eye = np.eye(DIM, dtype=np.float32)
    return np.stack([eye[GENRES.index(next(g for g in GENRES if g in t))] for t in texts])


def test_a_model_that_hears_the_genres_finds_the_moment_and_chance_is_the_share() -> None:
    windows, sections = sectioned_windows(40, 1)
    result = moment_accuracy(windows, [*sections, Section(999, 0, 5, "Rock")], genre_encoder)
    assert result is not None
    assert result.queries == 80  # the track without windows is not asked
    assert result.accuracy > 0.95 and result.chance == pytest.approx(0.5)
    assert result.ci_low <= result.accuracy <= result.ci_high and result.ci_low > result.chance
    asked: list[str] = []

    def random_encoder(texts: list[str]) -> np.ndarray:
        asked.extend(texts)
        return np.random.default_rng(len(texts)).standard_normal((len(texts), DIM))

    blind = moment_accuracy(windows, sections, random_encoder)
    assert blind is not None and blind.ci_low < 0.5 + 0.2 and blind.accuracy < result.accuracy
    assert sorted(asked) == sorted(MOMENT_QUERY.format(genre=g) for g in GENRES)
    assert moment_accuracy(windows, [Section(999, 0, 5, "Rock")], genre_encoder) is None


def independent_accuracy(setup: EvalSetup, source: Path, sections: list[Section]) -> float:
    """The share of sections whose query's best window (the stored windows of ``source``, its
    text tower on the CPU) starts inside them, computed apart from the evaluation."""
    clap = load_clap(source)
    windows = read_store(
        Settings.build(data_dir=setup.data_dir).window_embeddings_dir,
        model_fingerprint(clap.model),
        [s.track_id for s in sections],
    )
    hits = []
    for s in sections:
        rows = np.flatnonzero(windows.track_ids == s.track_id)
        query = encode_query(clap, MOMENT_QUERY.format(genre=s.genre))
        start = windows.start_s[rows[np.argmax(windows.embeddings[rows] @ query)]]
        hits.append(s.start_s <= start < s.end_s)
    return float(np.mean(hits))


def test_the_evaluation_measures_moment_accuracy_on_a_sectioned_demo_collection(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    setup = build_evaluation_setup(tmp_path, tiny_model_dir)
    sections = write_sectioned_tracks(setup, TEST_IDS)  # 10 s: two 5-s halves of two genres
    settings = Settings.build(data_dir=setup.data_dir, mlflow_tracking_uri=setup.tracking_uri)
    settings.metadata_dir.mkdir(parents=True, exist_ok=True)
    (settings.metadata_dir / SECTIONS_NAME).write_text(sections_csv_text(sections))
    config = EvalConfig(
        batch_size=8, n_bootstrap=300, random_rounds=50, seed=0, include_validation=False
    )
    report = evaluate(config, EvalInputs.from_settings(settings))

    moments = report.moments
    assert moments is not None and moments.query == MOMENT_QUERY
    assert set(moments.splits) == {"test"}
    block = moments.splits["test"]
    assert (block.n_tracks, block.n_sections) == (len(TEST_IDS), 2 * len(TEST_IDS))
    assert block.chance == pytest.approx(0.5)  # one of a track's 2 windows in each half
    assert set(block.models) == {"zero_shot", "fine_tuned", WISE_FT}
    for stat in block.models.values():
        assert 0 <= stat.ci_low <= stat.value <= stat.ci_high <= 1
        assert stat.value * len(sections) == pytest.approx(round(stat.value * len(sections)))
    fine_tuned = block.models["fine_tuned"].value
    assert fine_tuned == independent_accuracy(setup, setup.checkpoints[3], sections)
    table = format_evaluation_table(report)
    assert "moment accuracy, test split" in table and "chance (the section's share" in table
    tuned = block.models["fine_tuned"]
    verdict = f"in {tuned.value:.0%} [{tuned.ci_low:.0%}, {tuned.ci_high:.0%}] of 24 sections"
    assert verdict in "\n".join(verdict_lines(report))
    assert load_report(EvalInputs.from_settings(settings).report_path).moments == moments
    logged = mlflow_metrics(report)
    test_value = moments.splits["test"].models["zero_shot"].value
    assert logged["eval_zeroshot_test_moment_accuracy"] == test_value
    assert logged["eval_chance_test_moment_accuracy"] == pytest.approx(0.5)
