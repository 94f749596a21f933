"""Search feedback: the DuckDB table, its training/held-out parts, and liked queries in training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from clap_pipeline.dataset import Prompts
from clap_pipeline.feedback import (
    HELDOUT_SHARE,
    MAX_LIKED_PER_CLIENT,
    MAX_QUERIES_PER_TRACK,
    count_feedback,
    feedback_sets,
    is_heldout,
    read_feedback,
    record_feedback,
)
from clap_pipeline.training.data import TrainingData
from clap_pipeline_tests.training_fixtures import write_training_dataset

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _train_pair(track_id: int) -> str:
    """A query whose pair with ``track_id`` falls in the training part."""
    return next(f"liked {i}" for i in range(100) if not is_heldout(f"liked {i}", track_id))


def _heldout_pair(track_id: int) -> str:
    return next(f"liked {i}" for i in range(100) if is_heldout(f"liked {i}", track_id))


def test_rows_round_trip_and_count(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    assert count_feedback(db) == 0 and feedback_sets(db).heldout == []
    record_feedback(db, query=" folk ", track_id=5, relevant=True, model_version="3", created_at=T0)
    record_feedback(db, query="rock", track_id=6, relevant=False, model_version=None)
    rows = read_feedback(db)
    assert [(r.query, r.track_id, r.relevant, r.model_version) for r in rows] == [
        ("folk", 5, True, "3"),
        ("rock", 6, False, None),
    ]
    assert rows[0].created_at == T0 and count_feedback(db) == 2
    with pytest.raises(ValueError, match="empty query"):
        record_feedback(db, query=" ", track_id=5, relevant=True, model_version=None)


def test_one_row_per_client_query_and_track(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"

    def post(query: str, relevant: bool, client: str = "a") -> str:
        return record_feedback(
            db, query=query, track_id=5, relevant=relevant, model_version="1", client=client
        ).change

    assert post("warm guitar", True) == "added"
    assert post(" Warm  GUITAR ", True) == "unchanged"  # the same pair, the same verdict
    assert post("warm guitar", True, client="b") == "added"  # another client
    assert count_feedback(db) == 2
    assert post("warm guitar", False) == "replaced"  # a changed verdict replaces the row
    rows = read_feedback(db)
    assert sorted((r.client, r.relevant) for r in rows) == [("a", False), ("b", True)]
    assert count_feedback(db) == 2


def test_one_client_and_one_track_weigh_a_bounded_amount(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    tracks = list(range(1, 200))
    spam = [(f"spam {i}", t) for i, t in enumerate(tracks)]
    spam = [(q, t) for q, t in spam if not is_heldout(q, t)][: MAX_LIKED_PER_CLIENT + 20]
    for minutes, (query, track) in enumerate(spam):
        record_feedback(
            db,
            query=query,
            track_id=track,
            relevant=True,
            model_version="1",
            client="spammer",
            created_at=T0 + dt.timedelta(minutes=minutes),
        )
    sets = feedback_sets(db)
    assert sets.n_liked_pairs == MAX_LIKED_PER_CLIENT  # the client's most recent ones
    assert set(sets.liked) == {t for _, t in spam[-MAX_LIKED_PER_CLIENT:]}

    crowd = [f"crowd {i}" for i in range(200) if not is_heldout(f"crowd {i}", 500)]
    for i, query in enumerate(crowd[: MAX_QUERIES_PER_TRACK + 5]):
        record_feedback(
            db, query=query, track_id=500, relevant=True, model_version="1", client=f"c{i}"
        )
    assert len(feedback_sets(db).liked[500]) == MAX_QUERIES_PER_TRACK


def test_split_is_stable_about_a_fifth_and_case_insensitive() -> None:
    pairs = [(f"query {i}", i % 37) for i in range(4000)]
    share = sum(is_heldout(q, t) for q, t in pairs) / len(pairs)
    assert abs(share - HELDOUT_SHARE) < 0.03
    assert all(is_heldout(q, t) == is_heldout(q.upper() + "  ", t) for q, t in pairs[:200])


def test_latest_verdict_counts_and_only_training_likes_join(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    liked_q, flipped_q, held_q = _train_pair(5), _train_pair(6), _heldout_pair(5)
    for minutes, (query, track, relevant) in enumerate(
        [
            (liked_q, 5, True),
            (flipped_q, 6, True),
            (flipped_q.upper(), 6, False),  # the same pair, later: not liked any more
            (held_q, 5, True),
            (_heldout_pair(7), 7, False),
        ]
    ):
        record_feedback(
            db,
            query=query,
            track_id=track,
            relevant=relevant,
            model_version="1",
            created_at=T0 + dt.timedelta(minutes=minutes),
        )
    sets = feedback_sets(db)
    assert sets.liked == {5: (liked_q,)} and sets.n_liked_pairs == 1
    assert sorted((r.query, r.track_id, r.relevant) for r in sets.heldout) == sorted(
        [(held_q, 5, True), (_heldout_pair(7), 7, False)]
    )


def test_feedback_weight_sets_how_often_a_liked_query_is_the_text() -> None:
    prompts = Prompts(prompt={1: "a folk track", 2: "a rock track"}, renderings={})
    never = Prompts(prompts.prompt, {}, feedback={1: ("campfire songs",)}, feedback_weight=0.0)
    always = Prompts(prompts.prompt, {}, feedback={1: ("campfire songs",)}, feedback_weight=1.0)
    half = Prompts(prompts.prompt, {}, feedback={1: ("campfire", "banjo")}, feedback_weight=0.5)
    for epoch in range(20):
        assert never.text_for(1, seed=0, epoch=epoch, resample=False) == "a folk track"
        assert always.text_for(1, seed=0, epoch=epoch, resample=False) == "campfire songs"
        assert always.text_for(2, seed=0, epoch=epoch, resample=False) == "a rock track"
    texts = [half.text_for(1, seed=0, epoch=e, resample=False) for e in range(400)]
    assert 0.4 < sum(t != "a folk track" for t in texts) / 400 < 0.6
    assert {"campfire", "banjo"} <= set(texts)


def test_training_data_takes_liked_pairs_from_duckdb(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_training_dataset(data_dir)

    def load(weight: float) -> TrainingData:
        return TrainingData.load(
            data_dir / "prompts.parquet",
            data_dir / "waveforms",
            data_dir / "clap.duckdb",
            split_mode="fma",
            seed=0,
            batch_size=4,
            feedback_weight=weight,
        )

    train_id = load(0.0).splits.train[0]
    query = _train_pair(train_id)
    record_feedback(
        data_dir / "clap.duckdb", query=query, track_id=train_id, relevant=True, model_version="1"
    )

    plain, with_feedback = load(0.0), load(1.0)
    assert plain.prompts.feedback == {} and "feedback" not in plain.describe_counts()
    assert with_feedback.prompts.feedback == {train_id: (query,)}
    assert "1 liked (query, track) pairs" in with_feedback.describe_counts()
    # A different data version: a resumed run never mixes texts with and without feedback.
    assert with_feedback.prompts_version.startswith(plain.prompts_version + "+feedback-")
    batch_texts = [
        text
        for batch in with_feedback.train_batches(4, seed=0, epoch=0, resample=False, buffer_clips=8)
        for tid, text in zip(batch.track_ids.tolist(), batch.texts, strict=True)
        if tid == train_id
    ]
    assert batch_texts == [query]
    # Evaluation keeps the stored prompts.
    eval_texts = [t for b in with_feedback.eval_batches("validation", 4) for t in b.texts]
    assert query not in eval_texts
