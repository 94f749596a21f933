"""The training path on CUDA (bf16 autocast) next to the same work on CPU, for a GPU host.

Needs no MLflow, Dagster or network: it drives the training module's own epoch and
evaluation functions (``training._train_epoch``, ``training.evaluate_split``) on the
synthetic genre dataset of the training tests (its audio depends on its prompt), then

1. fine-tunes the tiny offline CLAP for ``--epochs`` epochs on CUDA (bf16 autocast) and
   on CPU (fp32) from the same weights and seed, printing loss and val R@5 side by side;
2. compares ``LogMelFeatures`` on CUDA with CPU on one batch (max |diff| in dB);
3. times training steps of the full-size architecture (``ClapModel(ClapConfig())``,
   compute-identical to laion/clap-htsat-unfused, random weights) on CUDA with
   ``precision`` fp32 and bf16 at each of ``--batches``, with the peak GPU memory; and on
   CPU (fp32, first batch size) for ``--cpu-steps`` steps.

Usage: python benchmarks/gpu_check.py [--epochs 4] [--batches 16 64] [--full-steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clap_pipeline.demo.training_set import write_training_dataset
from clap_pipeline.model.clap import load_clap
from clap_pipeline.model.features import features_for_model
from clap_pipeline.model.tiny import save_tiny_model
from clap_pipeline.training import loop as training
from clap_pipeline.training.config import TrainConfig
from clap_pipeline.training.data import TrainingData
from clap_pipeline.training.distributed import Ranks
from clap_pipeline.training.loop import TrainingHooks
from clap_pipeline.training.loss import clamp_logit_scale, contrastive_loss


def fine_tune(model_dir: Path, data: TrainingData, device: torch.device, epochs: int) -> list:
    torch.manual_seed(0)
    loaded = load_clap(model_dir)
    model = loaded.model.to(device)
    features = features_for_model(loaded, device)
    config = TrainConfig(batch_size=8, learning_rate=2e-3, max_epochs=epochs, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    rows = []
    for epoch in range(1, epochs + 1):
        stats = training._train_epoch(
            model=model,
            optimizer=optimizer,
            features=features,
            tokenizer=loaded.tokenizer,
            data=data,
            config=config,
            epoch=epoch,
            device=device,
            hooks=TrainingHooks(),
            report_progress=lambda p: None,
            ranks=Ranks.single(),
        )
        val_loss, metrics = training.evaluate_split(
            model, features, loaded.tokenizer, data, "validation", 8, device
        )
        rows.append(
            (epoch, stats.loss, val_loss, metrics["text_to_audio_recall_at_5"], stats.seconds)
        )
    return rows


def feature_parity(model_dir: Path, data: TrainingData) -> float:
    loaded = load_clap(model_dir)
    batch = next(iter(data.eval_batches("validation", 8)))
    waves = torch.as_tensor(batch.waveforms)
    cpu = features_for_model(loaded, torch.device("cpu"))(waves)
    gpu = features_for_model(loaded, torch.device("cuda"))
    on_gpu = gpu(waves.to("cuda")).cpu()
    return float((cpu - on_gpu).abs().max())


def full_size_steps(
    device: torch.device, batch: int, steps: int, precision: str = "fp32"
) -> tuple[float, float]:
    """Median seconds per training step and peak GPU memory (GiB) of the full-size CLAP."""
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(0)
    model = ClapModel(ClapConfig()).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    features = torch.randn(batch, 1, 1001, 64, device=device)  # (B, channel, frames, mels)
    ids = torch.randint(5, 1000, (batch, 24), device=device)
    mask = torch.ones_like(ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with training._autocast(device, precision)():
            out = model(input_ids=ids, attention_mask=mask, input_features=features)
        loss = contrastive_loss(out.text_embeds, out.audio_embeds, model.logit_scale_a)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_logit_scale(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times[1:] or times), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--full-steps", type=int, default=20)
    parser.add_argument("--cpu-steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU host")
        return 2
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
        f"bf16 autocast: {torch.cuda.is_bf16_supported()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_training_dataset(root / "data")
        data = TrainingData.load(
            root / "data" / "prompts.parquet",
            root / "data" / "waveforms",
            root / "data" / "clap.duckdb",
            split_mode="fma",
            seed=0,
            batch_size=8,
        )
        model_dir = save_tiny_model(root / "tiny", seed=0)
        print(f"\n1. tiny CLAP fine-tune, {data.describe_counts()}")
        cuda_rows = fine_tune(model_dir, data, torch.device("cuda"), args.epochs)
        cpu_rows = fine_tune(model_dir, data, torch.device("cpu"), args.epochs)
        print("epoch | train loss cuda-bf16 / cpu | val loss cuda / cpu | val R@5 cuda / cpu "
              "| epoch s cuda / cpu")  # fmt: skip
        for c, p in zip(cuda_rows, cpu_rows, strict=True):
            print(
                f"{c[0]:5d} | {c[1]:.4f} / {p[1]:.4f} | {c[2]:.4f} / {p[2]:.4f} | "
                f"{c[3]:.3f} / {p[3]:.3f} | {c[4]:.2f} / {p[4]:.2f}"
            )
        print(
            f"\n2. LogMelFeatures cuda vs cpu: max |diff| {feature_parity(model_dir, data):.2e} dB"
        )

    print("\n3. full-size CLAP training step (median after a warm-up step)")
    print("device  precision  batch  s/step  clips/s  peak GiB")
    cpu_batch = args.batches[0]
    step_cpu, _ = full_size_steps(torch.device("cpu"), cpu_batch, args.cpu_steps)
    print(f"cpu     fp32       {cpu_batch:5d}  {step_cpu:6.3f}  {cpu_batch / step_cpu:7.1f}  -")
    for batch in args.batches:
        for precision in ("fp32", "bf16"):
            step, peak = full_size_steps(torch.device("cuda"), batch, args.full_steps, precision)
            print(
                f"cuda    {precision:9s}  {batch:5d}  {step:6.3f}  {batch / step:7.1f}  {peak:8.2f}"
            )
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
