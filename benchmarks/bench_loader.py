"""Training loader throughput per CPU core, warm and cold page cache, vs what one H200 consumes.

What a rank's loader does for each clip, on one core (``torch.set_num_threads(1)``, no
prefetch thread), over the waveforms Parquet dataset (240,000 float32 samples per clip,
row groups of 64: the project's contract):

- read: ``TrainingData.train_batches`` (row group read + decode, shuffle buffer, prompt);
- read + log-mel: the same plus the full-size model's log-mel features
  (``LogMelFeatures`` of ``laion/clap-htsat-unfused``'s extractor, (B, 1, 1001, 64)),
  for a loader that computes features on the CPU instead of the GPU.

Cold cache: every Parquet file is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` before the pass, so the reads come from disk.
Then: cores per GPU at the H200's rate (648 clips/s, bf16 batch 64, measured with
``benchmarks/gpu_check.py``) and what the full fma_large costs in disk and epoch time.

Usage: python benchmarks/bench_loader.py [--clips 512] [--batch 64] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import load_data, write_dataset

from clap_pipeline.dataset import CLIP_SAMPLES
from clap_pipeline.model.clap import unfused_feature_extractor
from clap_pipeline.model.features import LogMelFeatures
from clap_pipeline.training.data import TrainingData

H200_CLIPS_PER_S = 648.0  # one H200, bf16, batch 64 (benchmarks/gpu_check.py)
FMA_LARGE_CLIPS = 106_574


def drop_page_cache(files: list[Path]) -> None:
    """Evict the files' pages (clean pages go; the next read comes from disk)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_pass(
    data: TrainingData, batch: int, epoch: int, per_batch: Callable[[torch.Tensor], object] | None
) -> tuple[int, float]:
    """(clips, seconds) of one epoch of training batches through the loader."""
    start, clips = time.perf_counter(), 0
    for b in data.train_batches(batch, seed=0, epoch=epoch, resample=False, buffer_clips=128):
        if per_batch is not None:
            per_batch(torch.from_numpy(b.waveforms))
        clips += len(b)
    return clips, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=512, help="clips in the temp dataset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes per cell (best kept)")
    parser.add_argument("--data-dir", type=Path, help="an existing data dir instead")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-loader-", dir="/var/tmp") as tmp:
        data_dir = args.data_dir or Path(tmp)
        if args.data_dir is None:
            write_dataset(data_dir, args.clips)
        data = load_data(data_dir, args.batch)
        # Every training clip (the split is by hash: ~80 %).
        data.splits = type(data.splits)(
            train=tuple(sorted(data.index.locations)), validation=(), test=(), mode="all"
        )
        files = data.index.files
        size = sum(f.stat().st_size for f in files)
        n = len(data.index.locations)
        mb_per_clip = size / n / 1e6
        features = LogMelFeatures(unfused_feature_extractor()).eval()

        def log_mel(waves: torch.Tensor) -> object:
            with torch.no_grad():
                return features(waves)

        print(
            f"dataset: {n} clips, {len(files)} file(s), {size / 1e6:.1f} MB "
            f"({mb_per_clip:.3f} MB/clip), batch {args.batch}, 1 thread"
        )
        print(f"{'cache':<6}{'stage':<16}{'clips/s/core':>13}{'MB/s':>9}{'cores per H200':>16}")
        rates: dict[tuple[str, str], float] = {}
        for stage, per_batch in (("read", None), ("read + log-mel", log_mel)):
            for cache in ("warm", "cold"):
                best = 0.0
                for r in range(args.repeats):
                    if cache == "warm":
                        one_pass(data, args.batch, 99, None)  # fill the cache
                    else:
                        drop_page_cache(files)
                    clips, seconds = one_pass(data, args.batch, r + 1, per_batch)
                    best = max(best, clips / seconds)
                rates[cache, stage] = best
                print(
                    f"{cache:<6}{stage:<16}{best:>13.1f}{best * mb_per_clip:>9.0f}"
                    f"{math.ceil(H200_CLIPS_PER_S / best):>16d}"
                )

    gb = FMA_LARGE_CLIPS * mb_per_clip / 1e3
    raw_mb = CLIP_SAMPLES * 4 / 1e6  # float32 samples, before Parquet's encoding
    epoch_s = FMA_LARGE_CLIPS / H200_CLIPS_PER_S
    read_cold = rates["cold", "read"]
    print(
        f"H200 consumes {H200_CLIPS_PER_S:.0f} clips/s = "
        f"{H200_CLIPS_PER_S * mb_per_clip:.0f} MB/s of waveforms"
    )
    print(
        f"fma_large: {FMA_LARGE_CLIPS} clips x {mb_per_clip:.3f} MB = {gb:.0f} GB of waveforms "
        f"(float32 samples: {FMA_LARGE_CLIPS * raw_mb / 1e3:.0f} GB); "
        f"one epoch at {H200_CLIPS_PER_S:.0f} clips/s = {epoch_s / 60:.1f} min per H200 "
        f"(N GPUs: / N); cold reads alone on one core: "
        f"{FMA_LARGE_CLIPS / read_cold / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
