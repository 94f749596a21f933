"""Search for the tiny CLAP's training recipe: one candidate, val and test R@5 per epoch.

How the recipe in ``scripts/tiny_model_run_config.yaml`` and ``model.tiny_clap_config``
was chosen (docs/training.md, "The tiny model's recipe"). Uses the training module's own loss,
weight-decay groups, clamp and learning-rate schedule on a dataset the pipeline already
prepared (``prompts.parquet``, ``waveforms/``, ``clap.duckdb`` under ``--data``), with
the log-mel features computed once and kept in memory so that candidates are cheap to
compare (the training loop computes them every batch; the numbers are the same
computation). Each epoch prints the validation and test text->audio / audio->text R@5;
the last line names the epoch that validation would pick and its test numbers.

    .venv/bin/python benchmarks/tiny_recipe.py --data data --batch-size 32 --lr 2e-3 \\
        --warmup 40 --epochs 20 --audio-width 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from transformers import ClapConfig, ClapModel  # noqa: E402

from clap_pipeline.metrics import random_recall, retrieval_metrics  # noqa: E402
from clap_pipeline.model.clap import load_clap, tokenize  # noqa: E402
from clap_pipeline.model.features import LogMelFeatures  # noqa: E402
from clap_pipeline.model.tiny import save_tiny_model, tiny_clap_config  # noqa: E402
from clap_pipeline.training.config import LR_SCHEDULES, TrainConfig, learning_rate_at  # noqa: E402
from clap_pipeline.training.data import TrainingData  # noqa: E402
from clap_pipeline.training.loop import train_step  # noqa: E402
from clap_pipeline.training.loss import optimizer_groups, prepare_logit_scales  # noqa: E402


def candidate_config(args: argparse.Namespace, vocab_size: int) -> ClapConfig:
    """``tiny_clap_config`` with the candidate's sizes."""
    base = tiny_clap_config(vocab_size).to_dict()
    audio, text = base["audio_config"], base["text_config"]
    depths = [int(d) for d in args.audio_depths.split(",")]
    audio.update(
        patch_size=args.patch,
        patch_stride=[args.patch, args.patch],
        patch_embeds_hidden_size=args.audio_width,
        depths=depths,
        num_attention_heads=[2] * len(depths),
        hidden_size=args.audio_width * 2 ** (len(depths) - 1),
    )
    text.update(hidden_size=args.text_width, intermediate_size=args.text_width * 4 // 3 + 1)
    return ClapConfig(
        text_config=text,
        audio_config=audio,
        projection_dim=base["projection_dim"],
        logit_scale_init_value=args.temperature_init,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=40, help="warm-up steps")
    parser.add_argument("--schedule", choices=LR_SCHEDULES, default="cosine")
    parser.add_argument("--temperature-init", type=float, default=1 / 0.07, help="exp(scale)")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--audio-width", type=int, default=32)
    parser.add_argument("--audio-depths", default="1,1")
    parser.add_argument("--text-width", type=int, default=32)
    parser.add_argument("--no-resample", action="store_true", help="one template per track")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = TrainingData.load(
        args.data / "prompts.parquet",
        args.data / "waveforms",
        args.data / "clap.duckdb",
        split_mode="fma",
        seed=0,
        batch_size=args.batch_size,
    )
    tiny = args.data / "models" / "tiny-clap"
    if not (tiny / "config.json").exists():
        save_tiny_model(tiny)
    processor = load_clap(tiny).processor
    torch.manual_seed(args.seed)
    model = ClapModel(candidate_config(args, len(processor.tokenizer)))
    features = LogMelFeatures(processor.feature_extractor).eval()
    cache: dict[int, torch.Tensor] = {}
    started = time.perf_counter()
    for split in ("train", "validation", "test"):
        for batch in data.eval_batches(split, 64):
            with torch.no_grad():
                feats = features(torch.from_numpy(batch.waveforms))
            cache.update({int(t): feats[i] for i, t in enumerate(batch.track_ids)})
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{data.describe_counts()}; {n_params:,} parameters; features in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )

    config = TrainConfig(
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_epochs=args.epochs,
        warmup_steps=args.warmup,
        lr_schedule=args.schedule,
    )
    prepare_logit_scales(model)
    optimizer = torch.optim.AdamW(optimizer_groups(model, args.weight_decay))
    train_ids = list(data.splits.train)
    steps = len(train_ids) // args.batch_size
    rng = np.random.default_rng(args.seed)
    tokenizer = processor.tokenizer

    def r5(split: str) -> tuple[float, float]:
        model.eval()
        ids = list(getattr(data.splits, split))
        with torch.no_grad():
            tokens = tokenize(tokenizer, [data.prompts.prompt[i] for i in ids])
            out = model(**tokens, input_features=torch.stack([cache[i] for i in ids]))
        m = retrieval_metrics((out.text_embeds @ out.audio_embeds.T).numpy())
        return m["text_to_audio_recall_at_5"], m["audio_to_text_recall_at_5"]

    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0, loss_sum = time.perf_counter(), 0.0
        order = rng.permutation(train_ids)
        for step in range(steps):
            ids = [int(t) for t in order[step * args.batch_size : (step + 1) * args.batch_size]]
            texts = [
                data.prompts.text_for(t, seed=0, epoch=epoch, resample=not args.no_resample)
                for t in ids
            ]
            lr = learning_rate_at(config, (epoch - 1) * steps + step + 1, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum += train_step(
                model,
                optimizer,
                torch.stack([cache[t] for t in ids]),
                tokenize(tokenizer, texts),
                torch.device("cpu"),
                precision="fp32",
            )
        val, test = r5("validation"), r5("test")
        history.append((epoch, val, test))
        print(
            f"epoch {epoch:2d} loss {loss_sum / steps:.3f} scale "
            f"{model.logit_scale_a.exp().item():5.1f} R@5 t2a/a2t val {val[0]:.3f}/{val[1]:.3f} "
            f"test {test[0]:.3f}/{test[1]:.3f} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    epoch, val, test = max(history, key=lambda h: (h[1][0], -h[0]))
    n_test = len(data.splits.test)
    print(
        "chosen by validation:",
        json.dumps({k: v for k, v in vars(args).items() if k != "data"}),
        f"-> epoch {epoch}: val t2a R@5 {val[0]:.3f}, test t2a/a2t R@5 {test[0]:.3f}/{test[1]:.3f} "
        f"(random {random_recall(5, n_test):.3f}, N={n_test})",
    )


if __name__ == "__main__":
    main()
