"""Which offline stand-in CLAP learns on a collection: test R@5, genre and instrument search, time.

Candidates (``--candidates``, comma-separated):

- ``tiny``: the stand-in ``make demo`` used (``tiny_clap_config``, random weights, the tiny
  tokenizer), trained with its recipe (batch 32, lr 2e-3, 40 warm-up steps, cosine);
- ``tiny-music-tok``: the same with the pre-trained stand-in's tokenizer
  (``pretrain.stand_in_tokenizer``: instrument and genre words are one token each);
- ``tiny-wide``: that, with an audio tower twice as wide (64);
- ``zero-shot``: the pre-trained stand-in (``--pretrained``), not fine-tuned;
- ``fine-tuned``: the pre-trained stand-in fine-tuned with ``--finetune-lr``;
- ``captions-mixed`` / ``captions-only`` (with ``--captions FILE``): the same, its training
  texts drawn from the captions table too (``CLAP_CAPTIONS_MODE=mixed``) or instead of the
  templates (``captions``), as the ``prompts`` asset builds them. With ``--captions`` every
  candidate's test R@5 is also given on the test clips' captions (first caption of each).

Every candidate trains on the collection's train split with the training loop's own step
(``pretrain.fit``: the pipeline's loss, AdamW groups, clamp and cosine schedule), templates
resampled per epoch as the pipeline does, keeps the epoch with the best validation
text->audio R@5 (the pipeline's selection) and is then scored once on the test split:
text->audio R@5 with a bootstrap interval, "<genre> music" precision@10 over the test clips
(genre_top, genres with >= 3 test clips) and "<instrument> music" precision@10 (instruments
named by >= 5 test clips' tags), each beside its random-ranking prior. Log-mel features are
computed once and kept in memory (the numbers are the pipeline's computation).

Needs a collection the pipeline prepared (``prompts.parquet``, ``waveforms/``,
``clap.duckdb`` under ``--data``: run ``scripts/demo.sh`` with CLAP_DATA_DIR, or at least
its tracks/prompts/waveforms steps).

    nice -n 19 .venv/bin/python benchmarks/stand_in_candidates.py --data data/rendered \\
        --pretrained data/models/pretrained-stand-in --epochs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from transformers import ClapModel  # noqa: E402

from clap_pipeline import genre_search  # noqa: E402
from clap_pipeline.dataset import Prompts, write_prompts  # noqa: E402
from clap_pipeline.demo.pretrain import (  # noqa: E402
    PretrainRecipe,
    fit,
    recall_at_5,
    stand_in_config,
    stand_in_tokenizer,
)
from clap_pipeline.evaluation import instrument_search  # noqa: E402
from clap_pipeline.metadata.captions import read_captions  # noqa: E402
from clap_pipeline.metadata.prompts import build_prompts, read_track_texts  # noqa: E402
from clap_pipeline.metrics import random_recall, retrieval_metrics_with_ci  # noqa: E402
from clap_pipeline.model.clap import (  # noqa: E402
    load_clap,
    text_embeddings,
    tokenize,
    unfused_feature_extractor,
)
from clap_pipeline.model.features import LogMelFeatures  # noqa: E402
from clap_pipeline.model.tiny import byte_level_tokenizer  # noqa: E402
from clap_pipeline.selection import read_genres  # noqa: E402
from clap_pipeline.storage import duckdb_connection  # noqa: E402
from clap_pipeline.tables import Table  # noqa: E402
from clap_pipeline.training.data import TrainingData  # noqa: E402


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().strip()


CANDIDATES = ("tiny", "tiny-music-tok", "tiny-wide", "zero-shot", "fine-tuned")
CAPTION_CANDIDATES = {"captions-mixed": "mixed", "captions-only": "captions"}


def caption_prompts(data_dir: Path, captions_path: Path, ids: list[int], mode: str) -> Prompts:
    """The prompts the ``prompts`` asset writes with ``CLAP_CAPTIONS_MODE=mode``."""
    with duckdb_connection(data_dir / "clap.duckdb", read_only=True) as con:
        texts = read_track_texts(con, ids)
    captions = read_captions(captions_path, ids)
    table = build_prompts(texts, 0, captions.by_track, mode).table
    with tempfile.TemporaryDirectory() as tmp:
        return Prompts.load(write_prompts(table, Path(tmp) / "prompts.parquet"))


def read_tags(duckdb_path: Path, track_ids: list[int]) -> dict[int, list[str]]:
    with duckdb_connection(duckdb_path, read_only=True) as con:
        rows = con.execute("SELECT track_id, track_tags FROM tracks").fetchall()
    wanted = set(track_ids)
    return {int(t): list(tags or []) for t, tags in rows if int(t) in wanted}


def interval(stat: dict[str, float]) -> str:
    return f"{stat['value']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "rendered")
    parser.add_argument("--pretrained", type=Path, default=REPO / "data/models/pretrained-stand-in")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--captions", type=Path, help="the collection's captions table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {load_average()}", flush=True)

    data = TrainingData.load(
        args.data / "prompts.parquet",
        args.data / "waveforms",
        args.data / "clap.duckdb",
        split_mode="fma",
        seed=0,
        batch_size=32,
    )
    features = LogMelFeatures(unfused_feature_extractor()).eval()
    cache: dict[int, torch.Tensor] = {}
    for split in ("train", "validation", "test"):
        for batch in data.eval_batches(split, 64):
            with torch.no_grad():
                feats = features(torch.from_numpy(batch.waveforms))
            cache.update({int(t): feats[i] for i, t in enumerate(batch.track_ids)})
    ids = sorted(cache)
    row_of = {t: i for i, t in enumerate(ids)}
    feats_all = torch.stack([cache[t] for t in ids])
    train_rows = [row_of[t] for t in data.splits.train]
    val_ids, test_ids = list(data.splits.validation), list(data.splits.test)
    val_rows, test_rows = [row_of[t] for t in val_ids], [row_of[t] for t in test_ids]
    prompt = data.prompts.prompt
    genre_of = read_genres(args.data / "clap.duckdb", test_ids)
    genre_labels = [genre_of.get(t) for t in test_ids]
    genres = genre_search.eligible_genres(genre_labels)
    tags = read_tags(args.data / "clap.duckdb", test_ids)
    inst_labels = [instrument_search.clip_instruments(tags.get(t)) for t in test_ids]
    instruments = instrument_search.eligible_instruments(inst_labels)
    config = genre_search.GenreSearchConfig(n_bootstrap=500, random_rounds=200)
    genre_prior = genre_search.prior_genre_search(genre_labels, genres, config)
    inst_prior = instrument_search.prior_instrument_search(inst_labels, instruments, config)
    print(
        f"{data.describe_counts()}; test genres {genres}; test instruments {instruments}",
        flush=True,
    )

    rows = []
    caption_test = None
    if args.captions:
        first = caption_prompts(args.data, args.captions, ids, "captions").prompt
        caption_test = [first[t] for t in test_ids]

    def texts_for(prompts: Prompts, epoch: int, rows_: list[int]) -> list[str]:
        return [prompts.text_for(ids[r], seed=0, epoch=epoch, resample=True) for r in rows_]

    for name in args.candidates.split(","):
        started = time.perf_counter()
        recipe = PretrainRecipe(epochs=args.epochs)
        torch.manual_seed(0)
        prompts = data.prompts
        if name in CAPTION_CANDIDATES:
            prompts = caption_prompts(args.data, args.captions, ids, CAPTION_CANDIDATES[name])
        if name in ("zero-shot", "fine-tuned", *CAPTION_CANDIDATES):
            loaded = load_clap(args.pretrained)
            model, tokenizer = loaded.model, loaded.tokenizer
            recipe = PretrainRecipe(epochs=args.epochs, learning_rate=args.finetune_lr)
        elif name == "tiny":
            tokenizer = byte_level_tokenizer()
            model = ClapModel(stand_in_config(len(tokenizer)))
        else:
            tokenizer = stand_in_tokenizer()
            model = ClapModel(stand_in_config(len(tokenizer), 64 if name == "tiny-wide" else 32))
        history = []
        if name != "zero-shot":
            val_texts = [prompts.prompt[t] for t in val_ids]
            print(f"== {name}", flush=True)
            history = fit(
                model,
                tokenizer,
                feats_all,
                partial(texts_for, prompts),
                train_rows,
                recipe,
                partial(recall_at_5, model, tokenizer, feats_all[val_rows], val_texts),
                partial(print, f"  {name}", flush=True),
            )
        model.eval()
        with torch.no_grad():
            out = model(
                **tokenize(tokenizer, [prompt[t] for t in test_ids]),
                input_features=feats_all[test_rows],
            )
            audio = out.audio_embeds.numpy()
            genre_q = text_embeddings(model, tokenize(tokenizer, [f"{g} music" for g in genres]))
            inst_q = text_embeddings(
                model, tokenize(tokenizer, instrument_search.instrument_queries(instruments))
            )
        recall = retrieval_metrics_with_ci((out.text_embeds @ out.audio_embeds.T).numpy())
        on_captions = []
        if caption_test is not None:
            with torch.no_grad():
                caption_embeds = text_embeddings(model, tokenize(tokenizer, caption_test))
            by_caption = retrieval_metrics_with_ci((caption_embeds @ out.audio_embeds.T).numpy())
            on_captions = [interval(by_caption["text_to_audio_recall_at_5"])]
        genre = genre_search.model_genre_search(
            genre_q.numpy(), audio, genre_labels, genres, config
        )
        inst = instrument_search.model_instrument_search(
            inst_q.numpy(), audio, inst_labels, instruments, config
        )
        best = max(history, key=lambda h: h["val_r5"]) if history else None
        rows.append(
            [
                name,
                f"{best['epoch']}/{len(history)}" if best else "-",
                interval(recall["text_to_audio_recall_at_5"]),
                interval(recall["audio_to_text_recall_at_5"]),
                *on_captions,
                interval(genre["precision_at_10"]),
                interval(inst["precision_at_10"]),
                f"{time.perf_counter() - started:.0f} s",
            ]
        )
        print(f"  {name}: {rows[-1]}", flush=True)

    n = len(test_ids)
    rows.append(
        [
            "random ranking",
            "-",
            f"{random_recall(5, n):.3f}",
            f"{random_recall(5, n):.3f}",
            *([f"{random_recall(5, n):.3f}"] if caption_test is not None else []),
            interval(genre_prior["precision_at_10"]),
            interval(inst_prior["precision_at_10"]),
            "-",
        ]
    )
    headers = [
        "candidate",
        "best epoch",
        "test t2a R@5",
        "test a2t R@5",
        *(["test t2a R@5, captions"] if caption_test is not None else []),
        "test genre P@10",
        "test instrument P@10",
        "time",
    ]
    print()
    print(f"{args.data}: {n} test clips; load average {load_average()}")
    print(Table(headers, rows).markdown())


if __name__ == "__main__":
    main()
