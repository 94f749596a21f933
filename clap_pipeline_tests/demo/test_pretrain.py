"""The pre-trained stand-in: its corpus stays apart from demo collections, captions follow
the arrangement, and a (very small) pre-training writes a model the pipeline loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.dataset import MAX_TRACK_ID
from clap_pipeline.demo import SHIPPED_STAND_IN
from clap_pipeline.demo.captions import caption
from clap_pipeline.demo.collection import write_demo_dataset
from clap_pipeline.demo.plan import GENRE_BY_ID, TOP_OF_STYLE, plan_dataset
from clap_pipeline.demo.pretrain import (
    CLIPS_FILE,
    CORPUS_FILE,
    RECORD_FILE,
    SYNTH,
    PretrainRecipe,
    build_corpus,
    plan_corpus,
    pretrain_stand_in,
    stand_in_tokenizer,
)
from clap_pipeline.demo.rendered import INSTRUMENT_WORDS
from clap_pipeline.demo.schemes import PRETRAIN_SCHEMES, PRETRAIN_SOUNDFONTS
from clap_pipeline.model.clap import load_clap
from clap_pipeline_tests.demo.test_rendered import needs_fluidsynth


def test_the_corpus_is_apart_from_every_demo_collection_and_varied() -> None:
    recipe = PretrainRecipe(clips=200)
    corpus = plan_corpus(recipe)
    assert plan_corpus(recipe) == corpus  # a function of the recipe
    ids = [c.clip_id for c in corpus]
    assert min(ids) > MAX_TRACK_ID  # no demo collection (FMA ids) can hold these clips
    demo_ids = {p.track_id for p in plan_dataset(200, seed=0, renderer="fluidsynth")}
    assert demo_ids.isdisjoint(ids)
    top_of_title = {g[2]: g[3] for g in GENRE_BY_ID.values()}
    styles = [c.style for c in corpus]
    assert {styles.count(s) for s in set(styles)} == {25}  # balanced genres
    for clip in corpus:
        _kit, basses, chords, leads = PRETRAIN_SCHEMES[clip.scheme].band[clip.style]
        assert set(clip.band) <= {"drums", *basses, *chords, *leads}
        assert top_of_title[clip.genre] == TOP_OF_STYLE[clip.style]  # a genre of its style
        assert clip.params(7).instruments == clip.band
        assert (clip.soundfont == SYNTH) == (clip.band == ())  # the synthesiser has no band
    # Several arrangement schemes, two soundfonts and the synthesiser.
    sources = Counter((c.scheme, c.soundfont) for c in corpus if c.soundfont != SYNTH)
    assert {s for s, _ in sources} == set(PRETRAIN_SCHEMES) and len(sources) == 8
    assert 30 <= sum(c.soundfont == SYNTH for c in corpus) <= 70  # synth_share 0.25
    assert {c.soundfont for c in corpus} == {*PRETRAIN_SOUNDFONTS, SYNTH}


def test_captions_name_only_what_the_clip_plays() -> None:
    clip = replace(
        plan_corpus(PretrainRecipe(clips=8))[0],
        style="jazz",
        genre="Jazz",
        band=("drums", "piano"),
        words=("slow",),
    )
    texts = {caption(clip, np.random.default_rng(i)) for i in range(200)}
    assert len(texts) > 20  # several phrasings
    words = " ".join(texts).lower()
    assert "piano" in words and "drums" in words and "jazz" in words and "slow" in words
    others = set(INSTRUMENT_WORDS) - {"drums", "piano"}
    assert not any(f" {w}" in f" {t.lower()}" for t in texts for w in others if " " not in w)


def test_the_tokenizer_knows_instrument_and_genre_words() -> None:
    tokenizer = stand_in_tokenizer()
    for word in ("saxophone", "upright", "vibraphone", "strings", "classical", "slow"):
        assert len(tokenizer.tokenize(word)) == 1, word
    assert tokenizer("piano")["input_ids"][0] == 0  # RoBERTa framing <s> ... </s>


@needs_fluidsynth
def test_a_small_pretraining_writes_a_loadable_stand_in(tmp_path: Path) -> None:
    recipe = PretrainRecipe(clips=16, epochs=1, batch_size=8, warmup_steps=1)
    out = pretrain_stand_in(tmp_path / "model", recipe, cache_dir=tmp_path / "corpus", log=print)
    loaded = load_clap(out)
    assert loaded.tokenizer.tokenize("saxophone") == ["Ġsaxophone"]
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["corpus"]["clips"] == 16 and len(record["history"]) == 1
    assert record["corpus"]["first_clip_id"] > MAX_TRACK_ID
    feats = np.load(tmp_path / "corpus" / CORPUS_FILE)
    assert feats.shape == (16, 1, 1001, 64) and np.isfinite(feats).all()
    assert feats.astype(np.float32).std(axis=(1, 2, 3)).min() > 0  # every clip has sound
    # A second build with the same clips reads the cache (same bytes, no rendering).
    listed = (tmp_path / "corpus" / CLIPS_FILE).stat().st_mtime_ns
    again = build_corpus(tmp_path / "corpus", plan_corpus(recipe), recipe.seed, log=pytest.fail)
    assert np.array_equal(np.asarray(again), feats)
    assert (tmp_path / "corpus" / CLIPS_FILE).stat().st_mtime_ns == listed


def test_the_shipped_stand_in_loads_and_records_how_it_was_made() -> None:
    files = list(SHIPPED_STAND_IN.iterdir())
    assert sum(f.stat().st_size for f in files) <= 5 * 1024 * 1024  # small enough to ship
    loaded = load_clap(SHIPPED_STAND_IN)
    assert loaded.tokenizer.tokenize("upright bass") == ["Ġupright", "Ġbass"]
    record = json.loads((SHIPPED_STAND_IN / RECORD_FILE).read_text())
    assert record["corpus"]["first_clip_id"] > MAX_TRACK_ID
    assert record["recipe"]["seed"] == PretrainRecipe().seed
    assert len(record["history"]) == record["recipe"]["epochs"]
    # The kept epoch is the best on the held-out corpus clips, above a random ranking.
    best = max(h["val_r5"] for h in record["history"])
    assert best > 3 * 5 / record["corpus"]["validation_clips"]


def test_the_offline_fallback_is_the_same_stand_in_for_every_collection(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    synthesised = tmp_path / "synth"
    write_demo_dataset(synthesised, n_tracks=12, seed=0, renderer="synth", log=None)
    chosen = []
    for metadata in (synthesised / "fma_metadata", tmp_path / "someone-elses"):
        done = subprocess.run(
            ["bash", "-c", 'source scripts/offline_model.sh && echo "$CLAP_MODEL|$CLAP_RETRAIN_RUN_CONFIG"'],
            cwd=repo, capture_output=True, text=True, check=True,
            env={**os.environ, "PY": sys.executable, "CLI": "false", "HF_HUB_OFFLINE": "1",
                 "CLAP_MODEL": str(tmp_path / "no-model"), "FMA_METADATA_DIR": str(metadata),
                 "CLAP_RETRAIN_RUN_CONFIG": ""},
        )  # fmt: skip
        chosen.append(done.stdout.strip().splitlines()[-1])
    expected = f"{SHIPPED_STAND_IN}|{repo / 'scripts' / 'pretrained_stand_in_run_config.yaml'}"
    assert chosen == [expected, expected]
