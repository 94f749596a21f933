"""GPU host check: the real `clap_model` asset under Dagster + MLflow through torchrun, then MFU.

One prepared script for any GPU host (it needs this project installed, nothing online):

1. Materializes `clap_model` with ``launcher: torchrun`` (``nproc_per_node`` 1 by default)
   through Dagster Pipes into a temp Dagster instance and MLflow SQLite store, over a
   generated FMA-format training set, with the full-size CLAP architecture
   (``ClapModel(ClapConfig())``, random weights, compute-identical to
   laion/clap-htsat-unfused) or the tiny one (``--tiny``). Prints the run's status,
   MLflow run, epochs and clips/s as Dagster recorded them.
2. Model FLOPs per training step (forward + backward) counted with
   ``torch.utils.flop_counter.FlopCounterMode``, then MFU = FLOPs per step / seconds per
   step / the card's peak dense bf16 FLOP/s, for the variants the best trainers use,
   each added to the previous one: bf16 autocast, a larger batch, SDPA attention, fused
   AdamW, channels-last inputs, torch.compile, bf16 weights end to end.

Peak dense bf16: H100/H200 989 TFLOP/s, A100 312 (``--peak-tflops`` for others). On a
CPU there is no such peak: MFU is skipped with a line saying so unless
``--peak-tflops`` is given.

Usage: python benchmarks/gpu_mfu.py [--device cuda] [--batch 64] [--steps 20]
       python benchmarks/gpu_mfu.py --device cpu --tiny --steps 3   (smoke run, no GPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dagster import DagsterInstance, RunConfig, materialize

from clap_pipeline.config import Settings
from clap_pipeline.defs.resources import ClapSettings
from clap_pipeline.defs.training import ClapTrainingConfig, clap_model
from clap_pipeline.demo.training_set import write_training_dataset
from clap_pipeline.model.tiny import save_tiny_model, tiny_clap_config
from clap_pipeline.training.loss import clamp_logit_scale, contrastive_loss
from clap_pipeline.training.stand_in import full_size_config, save_full_size_model

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
TEXT_TOKENS = 24  # a BPE-length prompt (see bench_train.py)


# --------------------------------------------------------------------------- 1. Dagster run


def dagster_run(args: argparse.Namespace, root: Path) -> None:
    """Materialize `clap_model` through the torchrun launcher; print what Dagster recorded."""
    data_dir = root / "data"
    per_split = {"training": 8, "validation": 4, "test": 1}
    if not args.tiny:  # enough clips for full batches of the full-size recipe
        per_split = {"training": max(2 * args.batch // 4, 8), "validation": 8, "test": 1}
    write_training_dataset(data_dir, per_genre=per_split)
    model_dir = save_tiny_model(root / "tiny") if args.tiny else save_full_size_model(root / "full")
    settings = Settings.build(
        data_dir=data_dir,
        model=str(model_dir),
        mlflow_tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        mlflow_experiment="gpu-mfu",
    )
    config = ClapTrainingConfig(
        launcher="torchrun",
        nproc_per_node=args.nproc,
        device=args.device,
        precision="auto",
        batch_size=args.batch,
        learning_rate=1e-4,
        max_epochs=args.epochs,
        patience=args.epochs,
        log_checkpoints=False,
    )
    instance = DagsterInstance.ephemeral()
    start = time.perf_counter()
    result = materialize(
        [clap_model],
        resources={"clap_settings": ClapSettings.from_settings(settings)},
        run_config=RunConfig(ops={"clap_model": config}),
        instance=instance,
        raise_on_error=False,
    )
    print(f"dagster run {result.run_id}: success={result.success} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    for event in instance.all_logs(result.run_id):
        if event.dagster_event is None and event.user_message:
            print(f"  log: {event.user_message}")
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        for name in ("mlflow_run_id", "device", "world_size", "best_epoch",
                     "best_val_text_to_audio_recall_at_5", "train_clips_per_second",
                     "wall_time_s"):  # fmt: skip
            print(f"  {name}: {metadata[name].value}")


# --------------------------------------------------------------------------- 2. MFU


@dataclass(frozen=True)
class Variant:
    name: str
    batch: int
    autocast_bf16: bool = False
    sdpa: bool = False
    fused_adamw: bool = False
    channels_last: bool = False
    compile: bool = False
    bf16_weights: bool = False


def build_model(variant: Variant, tiny: bool, device: torch.device):
    from transformers import ClapModel

    config = tiny_clap_config() if tiny else full_size_config()
    torch.manual_seed(0)
    attention = "sdpa" if variant.sdpa else "eager"
    model = ClapModel._from_config(config, attn_implementation=attention).to(device).train()
    if variant.bf16_weights:
        model = model.to(torch.bfloat16)
    return model


def step_function(variant: Variant, tiny: bool, device: torch.device) -> Callable[[], None]:
    """One training step of ``variant`` on fixed random inputs (no data loading)."""
    model = build_model(variant, tiny, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=variant.fused_adamw or None)
    dtype = torch.bfloat16 if variant.bf16_weights else torch.float32
    features = torch.randn(variant.batch, 1, 1001, 64, device=device, dtype=dtype)
    if variant.channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(5, min(vocab, 1000), (variant.batch, TEXT_TOKENS), device=device)
    mask = torch.ones_like(ids)
    forward = torch.compile(model) if variant.compile else model
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if variant.autocast_bf16
        else torch.autocast(device.type, enabled=False)
    )

    def step() -> None:
        with autocast:
            out = forward(input_ids=ids, attention_mask=mask, input_features=features)
        loss = contrastive_loss(out.text_embeds, out.audio_embeds, model.logit_scale_a)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clamp_logit_scale(model)

    return step


def flops_per_step(variant: Variant, tiny: bool, device: torch.device) -> float:
    """Model FLOPs of one step (forward + backward), counted on the eager fp32 model."""
    from torch.utils.flop_counter import FlopCounterMode

    eager = replace(variant, compile=False, bf16_weights=False, autocast_bf16=False)
    step = step_function(eager, tiny, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def seconds_per_step(step: Callable[[], None], device: torch.device, steps: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up (and compilation)
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_flops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for card, tflops in PEAK_BF16_TFLOPS.items():
        if card in name:
            return tflops * 1e12
    return None


def mfu_table(args: argparse.Namespace, device: torch.device) -> None:
    """Each variant adds one change to the last one that ran (a failed change is dropped)."""
    peak = peak_flops(args, device)
    if peak is None:
        print(f"MFU: skipped on {device.type} (no dense bf16 peak known for it; pass "
              "--peak-tflops to compute one); FLOPs and step times follow")  # fmt: skip
    else:
        print(f"peak dense bf16: {peak / 1e12:.0f} TFLOP/s")
    print(f"{'variant':<28}{'batch':>6}{'GFLOP/step':>12}{'s/step':>9}{'clips/s':>9}{'MFU':>8}")
    flops: dict[int, float] = {}
    current = Variant("fp32 (baseline)", args.batch)
    changes: list[tuple[str, dict]] = [
        ("fp32 (baseline)", {}),
        ("+ bf16 autocast", {"autocast_bf16": True}),
        (f"+ batch {2 * args.batch}", {"batch": 2 * args.batch}),
        ("+ SDPA attention", {"sdpa": True}),
        ("+ fused AdamW", {"fused_adamw": True}),
        ("+ channels-last inputs", {"channels_last": True}),
        ("+ torch.compile", {"compile": True}),
        ("+ bf16 weights end to end", {"bf16_weights": True, "autocast_bf16": False}),
    ]
    for name, change in changes:
        variant = replace(current, name=name, **change)
        try:
            if variant.batch not in flops:
                flops[variant.batch] = flops_per_step(variant, args.tiny, device)
            seconds = seconds_per_step(
                step_function(variant, args.tiny, device), device, args.steps
            )
        except Exception as exc:  # a change this model or torch build does not support
            print(f"{name:<28}{variant.batch:>6}  not applied: {type(exc).__name__}: {exc}"[:160])
            continue
        current = variant
        achieved = flops[variant.batch] / seconds
        mfu = f"{100 * achieved / peak:7.1f}%" if peak else "     n/a"
        print(f"{name:<28}{variant.batch:>6}{flops[variant.batch] / 1e9:>12.1f}"
              f"{seconds:>9.3f}{variant.batch / seconds:>9.1f}{mfu}")  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny CLAP (smoke run)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the Dagster run")
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes (GPUs)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--skip-dagster", action="store_true")
    parser.add_argument("--skip-mfu", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --tiny for a smoke run")
        return 2
    described = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {described}, {'tiny' if args.tiny else 'full-size'} CLAP")
    if not args.skip_dagster:
        print("\n1. clap_model through Dagster Pipes + torchrun + MLflow")
        with tempfile.TemporaryDirectory(prefix="gpu-mfu-") as tmp:
            dagster_run(args, Path(tmp))
    if not args.skip_mfu:
        print(f"\n2. MFU of one training step (median of {args.steps})")
        mfu_table(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
