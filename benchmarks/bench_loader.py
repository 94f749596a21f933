"""Training loader throughput per CPU core and bytes per second of audio: the stored windows
(16-bit PCM, every window of each track, a random one per epoch) next to the format before
whole tracks (float32, the first window only), on the same audio, in the same run.

What a rank's loader does for each clip, on one core (``torch.set_num_threads(1)``, no
prefetch thread):

- read: ``TrainingData.train_batches`` (draw a window per track, row group read, PCM to
  float32, shuffle buffer, prompt); the reference reads the float32 ``input_values`` list
  column of one row per track as the loader did before (row group read, copy, shuffle
  buffer of copies, stack);
- read + log-mel: the same plus the full-size model's log-mel features
  (``LogMelFeatures`` of ``laion/clap-htsat-unfused``'s extractor, (B, 1, 1001, 64)),
  for a loader that computes features on the CPU instead of the GPU.

Cold cache: every Parquet file is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` before the pass, so the reads come from disk.
Then: bytes per second of audio of both formats (target: the windows <= 1/2), cores per
GPU at the H200's rate (648 clips/s, bf16 batch 64, measured with
``benchmarks/gpu_check.py``), and what fma_large (every window of its 30-s clips) and
fma_full (343 days of whole tracks) take on disk.

Usage: python benchmarks/bench_loader.py [--clips 384] [--windows 6] [--batch 64]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_train import load_data, write_dataset

from clap_pipeline.dataset import CLIP_SAMPLES, ROW_GROUP_ROWS, SAMPLE_RATE
from clap_pipeline.model.clap import unfused_feature_extractor
from clap_pipeline.model.features import LogMelFeatures
from clap_pipeline.training.data import TrainingData

H200_CLIPS_PER_S = 648.0  # one H200, bf16, batch 64 (benchmarks/gpu_check.py)
FMA_LARGE_SECONDS = 106_574 * 30.0  # 106,574 clips of 30 s
FMA_FULL_SECONDS = 343 * 86_400.0  # fma_full: 106,574 untrimmed tracks, 343 days of audio
_FLOAT_LIST = pa.list_(pa.field("element", pa.float32()))


def drop_page_cache(files: list[Path]) -> None:
    """Evict the files' pages (clean pages go; the next read comes from disk)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_reference(data: TrainingData, path: Path) -> float:
    """The format before whole tracks, from the same audio: each track's first window as
    240,000 float32 samples (zero-padded) in an ``input_values`` list column, row groups of
    64 rows. Returns the seconds of real audio it holds."""
    ids = sorted(data.index.locations)
    first = data.index.positions(ids)
    writer = None
    for lo in range(0, len(ids), ROW_GROUP_ROWS):
        pos = first[lo : lo + ROW_GROUP_ROWS]
        groups = data.index.groups_of(pos)
        waves = np.concatenate([data.index.read_positions(f, g, p) for (f, g), p in groups.items()])
        offsets = pa.array(np.arange(len(pos) + 1, dtype=np.int32) * CLIP_SAMPLES, pa.int32())
        values = pa.ListArray.from_arrays(offsets, pa.array(waves.ravel()), type=_FLOAT_LIST)
        table = pa.table({"track_id": pa.array(ids[lo : lo + ROW_GROUP_ROWS], pa.int64()),
                          "input_values": values})  # fmt: skip
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="none", use_dictionary=False)
        writer.write_table(table, len(pos))
    assert writer is not None
    writer.close()
    stored = pq.read_table(data.index.files, columns=["track_id", "n_samples_decoded"])
    track = stored.column("track_id").to_numpy()
    is_first = np.r_[True, track[1:] != track[:-1]]
    return float(stored.column("n_samples_decoded").to_numpy()[is_first].sum()) / SAMPLE_RATE


def reference_batches(path: Path, batch: int, epoch: int) -> Iterator[np.ndarray]:
    """The loader before whole tracks: row groups in a seeded order, each read whole, its
    clips copied into a shuffle buffer of 128, batches drawn from it and stacked."""
    pf = pq.ParquetFile(path)
    rng = np.random.default_rng([0, epoch])
    buf: list[np.ndarray] = []
    for rg in rng.permutation(pf.num_row_groups).tolist():
        column = pf.read_row_group(rg, columns=["track_id", "input_values"]).column(1).chunk(0)
        clips = np.array(column.values.to_numpy(zero_copy_only=False).reshape(-1, CLIP_SAMPLES))
        buf.extend(w.copy() for w in clips)
        del clips
        while len(buf) >= 128:
            picks = sorted(rng.choice(len(buf), size=batch, replace=False).tolist(), reverse=True)
            yield np.stack([buf.pop(i) for i in picks])
    while len(buf) >= batch:
        yield np.stack([buf.pop() for _ in range(batch)])


def one_pass(
    batches: Callable[[int], Iterator[np.ndarray]],
    epoch: int,
    per_batch: Callable[[torch.Tensor], object] | None,
) -> tuple[int, float]:
    """(clips, seconds) of one epoch of training batches through a loader."""
    start, clips = time.perf_counter(), 0
    for waves in batches(epoch):
        if per_batch is not None:
            per_batch(torch.from_numpy(waves))
        clips += len(waves)
    return clips, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=384, help="tracks in the temp dataset")
    parser.add_argument("--windows", type=int, default=6, help="windows per track (30-s clips)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes per cell (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-loader-", dir="/var/tmp") as tmp:
        data_dir = Path(tmp)
        write_dataset(data_dir, args.clips, windows=args.windows)
        data = load_data(data_dir, args.batch)
        # Every track trains (the split is by hash: ~80 %).
        data.splits = type(data.splits)(
            train=tuple(sorted(data.index.locations)), validation=(), test=(), mode="all"
        )
        reference = data_dir / "reference.parquet"
        reference_seconds = write_reference(data, reference)
        files = {"windows": data.index.files, "first window": [reference]}
        table = pq.read_table(data.index.files[0], columns=["n_samples_decoded"])
        seconds = {
            "windows": table.column("n_samples_decoded").to_numpy().sum() / SAMPLE_RATE,
            "first window": reference_seconds,
        }
        size = {k: sum(f.stat().st_size for f in v) for k, v in files.items()}
        per_s = {k: size[k] / seconds[k] for k in files}
        loaders: dict[str, Callable[[int], Iterator[np.ndarray]]] = {
            "windows": lambda epoch: (
                b.waveforms
                for b in data.train_batches(
                    args.batch, seed=0, epoch=epoch, resample=False, buffer_clips=128
                )
            ),
            "first window": lambda epoch: reference_batches(reference, args.batch, epoch),
        }
        features = LogMelFeatures(unfused_feature_extractor()).eval()

        def log_mel(waves: torch.Tensor) -> object:
            with torch.no_grad():
                return features(waves)

        n = len(data.index.locations)
        print(
            f"dataset: {n} tracks, {data.index.n_windows} windows of 5 s "
            f"({seconds['windows']:.0f} s of audio) in {size['windows'] / 1e6:.1f} MB; the "
            f"float32 first-window reference {size['first window'] / 1e6:.1f} MB; batch "
            f"{args.batch}, 1 thread"
        )
        print(
            f"bytes per second of audio: windows (16-bit PCM) {per_s['windows']:,.0f}, "
            f"first window (float32) {per_s['first window']:,.0f}: ratio "
            f"{per_s['windows'] / per_s['first window']:.3f} (target <= 0.5)"
        )
        print(f"{'cache':<6}{'stage':<16}{'format':<14}{'clips/s/core':>13}{'cores per H200':>16}")
        rates: dict[tuple[str, str, str], float] = {}
        for stage, per_batch in (("read", None), ("read + log-mel", log_mel)):
            for cache in ("warm", "cold"):
                for r in range(args.repeats):  # interleaved: load changes hit both alike
                    for name, loader in loaders.items():
                        if cache == "warm":
                            one_pass(loader, 99, None)  # fill the cache
                        else:
                            drop_page_cache(files[name])
                        clips, secs = one_pass(loader, r + 1, per_batch)
                        key = (cache, stage, name)
                        rates[key] = max(rates.get(key, 0.0), clips / secs)
                for name in loaders:
                    best = rates[cache, stage, name]
                    print(
                        f"{cache:<6}{stage:<16}{name:<14}{best:>13.1f}"
                        f"{math.ceil(H200_CLIPS_PER_S / best):>16d}"
                    )
                ratio = rates[cache, stage, "windows"] / rates[cache, stage, "first window"]
                print(f"{'':<36}windows / first window = {ratio:.2f}x (target >= 1)")

    print(
        f"disk at {per_s['windows']:,.0f} B/s of audio: fma_large (every window of its "
        f"106,574 30-s clips) {FMA_LARGE_SECONDS * per_s['windows'] / 1e9:.0f} GB, fma_full "
        f"(343 days of whole tracks) {FMA_FULL_SECONDS * per_s['windows'] / 1e12:.2f} TB; "
        f"float32 would take {FMA_LARGE_SECONDS * per_s['first window'] / 1e9:.0f} GB and "
        f"{FMA_FULL_SECONDS * per_s['first window'] / 1e12:.2f} TB"
    )
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
