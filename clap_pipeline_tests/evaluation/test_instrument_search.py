"""Instrument search: instruments from tags, multi-label relevance, scores and prior."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from clap_pipeline.evaluation.instrument_search import (
    clip_instruments,
    eligible_instruments,
    instrument_queries,
    model_instrument_search,
    prior_instrument_search,
    read_instruments,
    relevance,
)
from clap_pipeline.genre_search import GenreSearchConfig, precision_and_ap

QUICK = GenreSearchConfig(n_bootstrap=200, random_rounds=300, seed=1)


def test_instruments_are_the_tags_that_name_one() -> None:
    tags = ["Drums", " upright bass ", "slow", "netlabel", "piano", "bass drum loops"]
    assert clip_instruments(tags) == {"drums", "upright bass", "piano"}
    assert clip_instruments(None) == frozenset()
    labels = [clip_instruments(t) for t in (["piano"], ["piano", "drums"], ["drums"], [])]
    assert eligible_instruments(labels, min_tracks=2) == ["drums", "piano"]
    assert instrument_queries(["piano"]) == ["piano music"]
    assert relevance(labels, ["drums", "piano"]).tolist() == [
        [False, True, True, False],
        [True, True, False, False],
    ]


def test_a_clip_counts_for_every_instrument_it_plays() -> None:
    # 4 instruments, 40 clips; clip n plays instruments n % 4 and (n + 1) % 4.
    names = ["bass", "drums", "piano", "strings"]
    labels = [frozenset({names[n % 4], names[(n + 1) % 4]}) for n in range(40)]
    audio = np.array([[float(i in (n % 4, (n + 1) % 4)) for i in range(4)] for n in range(40)])
    result = model_instrument_search(np.eye(4), audio, labels, names, QUICK)
    assert result["precision_at_10"]["value"] == 1.0
    assert result["average_precision"]["value"] == 1.0
    assert set(result["per_instrument"]) == set(names)
    prior = prior_instrument_search(labels, names, QUICK)
    # Each instrument is played by half of the clips: a random ranking's precision@10.
    assert prior["precision_at_10"]["value"] == pytest.approx(0.5)
    assert prior["precision_at_10"]["ci_high"] < 1.0
    assert prior["shares"] == {n: 0.5 for n in names}


def test_scores_match_a_direct_computation_per_instrument() -> None:
    rng = np.random.default_rng(3)
    names = ["drums", "piano", "strings"]
    labels = [frozenset(n for n in names if rng.random() < 0.4) or {"piano"} for _ in range(30)]
    audio, queries = rng.standard_normal((30, 8)), rng.standard_normal((3, 8))
    result = model_instrument_search(queries, audio, labels, names, QUICK)
    scores = queries @ audio.T
    expected = [
        precision_and_ap(scores[i], np.array([n in lab for lab in labels]), 10)
        for i, n in enumerate(names)
    ]
    assert result["precision_at_10"]["value"] == pytest.approx(np.mean([e[0] for e in expected]))
    assert result["average_precision"]["value"] == pytest.approx(np.mean([e[1] for e in expected]))
    low, high = result["precision_at_10"]["ci_low"], result["precision_at_10"]["ci_high"]
    assert low <= result["precision_at_10"]["value"] <= high


def test_instruments_are_read_from_the_tracks_tags(tmp_path: Path) -> None:
    path = tmp_path / "clap.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE tracks (track_id BIGINT, track_tags VARCHAR[])")
        con.execute(
            "INSERT INTO tracks VALUES (1, ['Piano', 'slow']), (2, []), (3, NULL), (4, ['drums'])"
        )
    assert read_instruments(path, [1, 2, 3]) == {
        1: frozenset({"piano"}),
        2: frozenset(),
        3: frozenset(),
    }
    other = tmp_path / "no_tags.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE tracks (track_id BIGINT, track_genre_top VARCHAR)")
    assert read_instruments(other, [1]) == {}  # no tags column: no instrument search
