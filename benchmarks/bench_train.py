"""Training-step time, data (read + features) vs model, for the tiny and the full-size CLAP.

Builds a small waveforms Parquet dataset (the project's contract: one 5-s window of
240,000 16-bit samples per row, row groups of 64) and prompts.parquet in a temp dir, then runs
the training step the way `clap_pipeline.training` does it:

- data: wait for the next batch from the streaming loader (`TrainingData.train_batches`
  behind `prefetch`, as in training) + torch log-mel features (`LogMelFeatures`) +
  tokenization;
- model: forward, symmetric InfoNCE (`training.contrastive_loss`), backward, AdamW
  step, logit-scale clamp.

Configs: the tiny offline CLAP (`tiny_clap_config()`) and the full-size
architecture (`ClapModel(ClapConfig())`, randomly initialised, compute-identical
to laion/clap-htsat-unfused). Each runs in its own process so its peak RSS is its
own. On CUDA each config also runs with bf16 autocast.

The full-size text tower is fed ``--full-text-tokens`` tokens per prompt: the
offline byte-level tokenizer makes ~1 token per character, RoBERTa's BPE about a
third of that, so the byte-level ids are cut to a BPE-like length.

Then the feature path alone on one batch: `LogMelFeatures` (torch) vs
`ClapFeatureExtractor` (numpy, what the processor runs), interleaved repeats.

Targets on CPU: data share of step time <= 10 %; torch features >= 2x faster.
Usage: python benchmarks/bench_train.py [--steps 3] [--tiny-steps 10] [--batch 16]
       [--skip-full] [--skip-tiny] [--full-text-tokens 24] [--device cuda]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    PROMPTS_SCHEMA,
    ROW_GROUP_ROWS,
    SAMPLE_RATE,
    PartitionWriter,
    audio_path,
    partition_path,
    waveform_batch,
    waveforms_schema,
    write_prompts,
)
from clap_pipeline.model.clap import tokenize, unfused_feature_extractor
from clap_pipeline.model.features import LogMelFeatures
from clap_pipeline.model.tiny import byte_level_tokenizer, tiny_clap_config
from clap_pipeline.training.config import TrainConfig
from clap_pipeline.training.data import ClipBatch, TrainingData, prefetch
from clap_pipeline.training.loss import clamp_logit_scale, contrastive_loss

SR = SAMPLE_RATE
ROW_GROUP = ROW_GROUP_ROWS
GENRES = ("Rock", "Folk", "Electronic", "Hip-Hop", "Experimental", "Jazz", "Classical", "Pop")
TAGS = ("guitar", "lo-fi", "ambient", "live", "drums", "piano", "synth", "vocal")


# --------------------------------------------------------------------------- dataset


def write_dataset(root: Path, n_clips: int, seed: int = 0, windows: int = 1) -> tuple[Path, Path]:
    """prompts.parquet + waveforms/000.parquet following the data contracts: ``windows``
    5-s windows per track (20 % of the tracks end in a partial window)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(2, 2 + n_clips, dtype=np.int64)
    waves_dir = root / "waveforms"
    # Music-like content is irrelevant to compute; noise, and the last window of 20 % of
    # the tracks partial (between 2.5 s and 5 s: the window rule keeps it, padded).
    last = np.where(
        rng.random(n_clips) < 0.2, rng.integers(SR * 5 // 2, CLIP_SAMPLES, n_clips), CLIP_SAMPLES
    )
    track_ids = np.repeat(ids, windows)
    starts = np.tile(np.arange(windows) * 5.0, n_clips)
    counts = np.where(np.tile(np.arange(windows) == windows - 1, n_clips), np.repeat(last, windows),
                      CLIP_SAMPLES)  # fmt: skip
    waves_dir.mkdir(parents=True, exist_ok=True)
    writer = PartitionWriter(partition_path(waves_dir, "000"), waveforms_schema())
    try:
        for lo in range(0, len(track_ids), ROW_GROUP):  # a row group at a time: bounded memory
            hi = min(lo + ROW_GROUP, len(track_ids))
            values = rng.standard_normal((hi - lo, CLIP_SAMPLES), dtype=np.float32) * 0.1
            writer.add([waveform_batch(
                track_ids[lo:hi],
                values.clip(-1, 1),
                start_s=starts[lo:hi],
                n_samples_decoded=counts[lo:hi],
                source_paths=[audio_path("/fma", t) for t in track_ids[lo:hi]],
                source_sizes=np.full(hi - lo, 5_000_000, dtype=np.int64),
                source_mtimes=np.full(hi - lo, 1.7e9),
            )])  # fmt: skip
    finally:
        writer.close()
    prompts, renderings = [], []
    for t in ids:
        genre, tags = GENRES[t % len(GENRES)], rng.choice(TAGS, size=2, replace=False)
        text = f"{genre} track 'Song {t}' by Artist {t % 37}, tags: {tags[0]}, {tags[1]}"
        prompts.append(text)
        renderings.append([text, f"{genre} music", None, None, None])
    prompts_path = write_prompts(
        pa.table(
            {
                "track_id": ids,
                "prompt": prompts,
                "template_id": np.zeros(n_clips, dtype=np.int32),
                "renderings": renderings,
            },
            schema=PROMPTS_SCHEMA,
        ),
        root / "prompts.parquet",
    )
    return prompts_path, waves_dir


def load_data(data_dir: Path, batch: int) -> TrainingData:
    return TrainingData.load(
        data_dir / "prompts.parquet",
        data_dir / "waveforms",
        None,
        split_mode="hash",
        seed=0,
        batch_size=batch,
    )


def endless_train_batches(
    data: TrainingData, batch: int, config: TrainConfig
) -> Iterator[ClipBatch]:
    for epoch in itertools.count(1):
        yield from data.train_batches(
            batch,
            seed=config.seed,
            epoch=epoch,
            resample=config.resample_templates,
            buffer_clips=config.shuffle_buffer,
        )


# --------------------------------------------------------------------------- one config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(name: str):
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(0)
    return ClapModel(tiny_clap_config() if name == "tiny" else ClapConfig())


def time_steps(
    name: str, args: argparse.Namespace, device: torch.device, bf16: bool
) -> dict[str, float]:
    """Warm-up then measured steps; per-step means in seconds."""
    config = TrainConfig(batch_size=args.batch)
    data = load_data(Path(args.data), args.batch)
    model = build_model(name).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    features = LogMelFeatures(unfused_feature_extractor()).to(device).eval()
    tokenizer = byte_level_tokenizer()
    max_tokens = args.full_text_tokens if name == "full" else None
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if bf16
        else (lambda: torch.autocast(device.type, enabled=False))
    )
    batches = prefetch(endless_train_batches(data, args.batch, config))
    totals = {"read": 0.0, "features": 0.0, "tokenize": 0.0, "model": 0.0}
    tokens_per_clip = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            with torch.no_grad():
                waves = torch.from_numpy(batch.waveforms).to(device, non_blocking=True)
                input_features = features(waves)
            sync(device)
            t2 = time.perf_counter()
            tokens = tokenize(tokenizer, batch.texts, device)
            if max_tokens:
                tokens = {k: v[:, :max_tokens] for k, v in tokens.items()}
            tokens_per_clip = int(tokens["input_ids"].shape[1])
            t3 = time.perf_counter()
            with autocast():
                out = model(
                    input_ids=tokens["input_ids"],
                    attention_mask=tokens["attention_mask"],
                    input_features=input_features,
                )
            loss = contrastive_loss(out.text_embeds, out.audio_embeds, model.logit_scale_a)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clamp_logit_scale(model)
            if not math.isfinite(float(loss.detach())):
                raise RuntimeError(f"{name}: non-finite loss at step {step}")
            sync(device)
            t4 = time.perf_counter()
            if step >= args.warmup:
                for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    totals[key] += seconds
    finally:
        batches.close()  # stops the prefetch thread
    result = {k: v / args.steps for k, v in totals.items()}
    result["steps"] = args.steps
    result["params"] = sum(p.numel() for p in model.parameters())
    result["tokens_per_clip"] = tokens_per_clip
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_one(args: argparse.Namespace) -> None:
    """Child process: one config (fp32 and, on CUDA, bf16); prints one JSON line per precision."""
    device = torch.device(args.device)
    precisions = [False] + (
        [True] if device.type == "cuda" and torch.cuda.is_bf16_supported() else []
    )
    for bf16 in precisions:
        result = time_steps(args.one, args, device, bf16)
        result.update(config=args.one, device=device.type, precision="bf16" if bf16 else "fp32")
        print("RESULT " + json.dumps(result), flush=True)


def print_step_table(rows: list[dict], batch: int, warmup: int) -> None:
    print(
        f"\nTraining step, batch {batch}, mean over the measured steps after {warmup} warm-up "
        f"(torch threads {torch.get_num_threads()}; tok = text tokens per clip):"
    )
    header = (
        f"{'config':<7}{'params':>12} {'dev':<5}{'prec':<5}{'steps':>6}{'tok':>4}"
        f"{'read ms':>9}{'feat ms':>9}{'tok ms':>8}{'data ms':>9}{'model ms':>10}{'step ms':>10}"
        f"{'data %':>8}{'clips/s':>9}{'peak RSS MB':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        data = r["read"] + r["features"] + r["tokenize"]
        step = data + r["model"]
        line = (
            f"{r['config']:<7}{r['params']:>12,} {r['device']:<5}{r['precision']:<5}"
            f"{r['steps']:>6}{r['tokens_per_clip']:>4}{r['read'] * 1e3:>9.1f}{r['features'] * 1e3:>9.1f}"
            f"{r['tokenize'] * 1e3:>8.1f}{data * 1e3:>9.1f}{r['model'] * 1e3:>10.1f}"
            f"{step * 1e3:>10.1f}{100 * data / step:>7.1f}%{batch / step:>9.2f}"
            f"{r['peak_rss_mb']:>13.0f}"
        )
        if "peak_gpu_mb" in r:
            line += f"  peak GPU {r['peak_gpu_mb']:.0f} MB"
        print(line)
    print("target on CPU: data share <= 10 % of the step")


# --------------------------------------------------------------------------- features


def compare_features(data_dir: Path, batch: int, repeats: int) -> None:
    """LogMelFeatures vs ClapFeatureExtractor on the same batch, interleaved repeats."""
    data = load_data(data_dir, batch)
    clips = next(data.eval_batches("train", batch))
    waves = clips.waveforms
    extractor = unfused_feature_extractor()
    features = LogMelFeatures(extractor).eval()
    threads = torch.get_num_threads()

    def numpy_path() -> np.ndarray:
        out = extractor(list(waves), sampling_rate=SR, return_tensors="pt")["input_features"]
        return out.numpy()

    def torch_path() -> np.ndarray:
        with torch.no_grad():
            return features(torch.from_numpy(waves)).numpy()

    def torch_one_thread() -> np.ndarray:
        torch.set_num_threads(1)
        try:
            return torch_path()
        finally:
            torch.set_num_threads(threads)

    paths = {
        "ClapFeatureExtractor (numpy)": numpy_path,
        f"LogMelFeatures (torch, {threads} threads)": torch_path,
        "LogMelFeatures (torch, 1 thread)": torch_one_thread,
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, np.ndarray] = {}
    torch_path()  # first-call allocations
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref_name = next(iter(paths))
    ref_ms = statistics.median(times[ref_name]) * 1e3
    print(f"\nFeatures for one batch of {len(waves)} stored 5-s clips, median of {repeats}:")
    print(f"{'path':<38}{'ms/batch':>10}{'ms/clip':>9}{'speed-up':>10}{'max |diff| dB':>15}")
    for name in paths:
        ms = statistics.median(times[name]) * 1e3
        diff = float(np.abs(outputs[name].astype(np.float64) - outputs[ref_name]).max())
        print(f"{name:<38}{ms:>10.1f}{ms / len(waves):>9.1f}{ref_ms / ms:>9.2f}x{diff:>15.2e}")
    print("target: torch features >= 2x faster than ClapFeatureExtractor")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps (full-size)")
    parser.add_argument(
        "--tiny-steps", type=int, default=10, help="measured steps for the tiny config (cheap)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip-full", action="store_true", help="only the tiny config")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--feature-repeats", type=int, default=5)
    parser.add_argument(
        "--full-text-tokens", type=int, default=24, help="tokens per prompt for the full model"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", choices=("tiny", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.steps, args.tiny_steps) < 1 or args.batch < 2:
        parser.error("--steps/--tiny-steps must be >= 1 and --batch >= 2")
    if args.one:
        run_one(args)
        return

    configs = [c for c, skip in (("tiny", args.skip_tiny), ("full", args.skip_full)) if not skip]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data_dir = Path(tmp)
        # ~80 % of clips land in train (hash split); enough for warm-up + steps + a spare batch.
        most_steps = max(args.steps, 0 if args.skip_tiny else args.tiny_steps)
        n_clips = max(4 * args.batch, math.ceil((args.warmup + most_steps + 1) * args.batch / 0.7))
        t0 = time.perf_counter()
        write_dataset(data_dir, n_clips)
        print(
            f"dataset: {n_clips} clips x {CLIP_SAMPLES} samples in {data_dir} "
            f"({sum(f.stat().st_size for f in data_dir.rglob('*.parquet')) / 2**20:.0f} MB, "
            f"{time.perf_counter() - t0:.1f} s); device {args.device}; torch {torch.__version__}"
        )
        rows: list[dict] = []
        for name in configs:
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", name, "--data", str(data_dir)]
            steps = args.tiny_steps if name == "tiny" else args.steps
            cmd += ["--steps", str(steps)]
            for flag in ("warmup", "batch", "full_text_tokens", "device"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} config failed (exit {proc.returncode})")
            rows += [
                json.loads(line[len("RESULT ") :])
                for line in proc.stdout.splitlines()
                if line.startswith("RESULT ")
            ]
            print(f"{name}: done in {time.perf_counter() - t0:.1f} s (process incl. model build)")
        if rows:
            print_step_table(rows, args.batch, args.warmup)
        compare_features(data_dir, args.batch, args.feature_repeats)


if __name__ == "__main__":
    main()
