"""Training loader throughput per CPU core and bytes per second of audio: the stored windows
(16-bit PCM, every window of each track, a random one per epoch) next to the format before
whole tracks (float32, the first window only), on the same audio, in the same run.

What a rank's loader does for each clip, on one core (``torch.set_num_threads(1)``, no
prefetch thread):

- read: ``TrainingData.train_batches`` (draw a window per track, read its bytes by offset
  (``pcm_offsets.py``), PCM to float32, shuffle buffer, prompt); "row groups" is the same
  loader reading each row group whole (``WaveformIndex.direct_reads`` off: the reader
  before offsets); the reference reads the float32 ``input_values`` list column of one row
  per track as the loader did before whole tracks (row group read, copy, shuffle buffer of
  copies, stack);
- read + log-mel: the same plus the full-size model's log-mel features
  (``LogMelFeatures`` of ``laion/clap-htsat-unfused``'s extractor, (B, 1, 1001, 64)),
  for a loader that computes features on the CPU instead of the GPU;
- every window: all windows in dataset order (``ordered_window_batches``: what the
  evaluation and the ``window_embeddings`` stage read), by offset and by row group.

Cold cache: every Parquet file is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` before the pass, so the reads come from disk;
"disk MB/clip" is what the pass had read from storage (``/proc/self/io`` read_bytes, the
kernel's read-ahead included) per clip.
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
from dataclasses import replace
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
from clap_pipeline.waveform_reader import ordered_window_batches

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


def disk_read_bytes() -> int:
    """Bytes this process has had read from storage (page-cache misses, read-ahead too)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def timed_cells(
    stage: str,
    cache: str,
    loaders: dict[str, Callable[[int], Iterator[np.ndarray]]],
    files: dict[str, list[Path]],
    per_batch: Callable[[torch.Tensor], object] | None,
    repeats: int,
) -> None:
    """Best clips/s of each loader over ``repeats`` passes (interleaved: load changes hit
    them alike), from a warm or a dropped page cache, printed with the ratios."""
    rates: dict[str, float] = {}
    disk: dict[str, float] = {}
    for r in range(repeats):
        for name, loader in loaders.items():
            if cache == "warm":
                one_pass(loader, 99, None)  # fill the cache
            else:
                drop_page_cache(files[name])
            before = disk_read_bytes()
            clips, secs = one_pass(loader, r + 1, per_batch)
            disk[name] = (disk_read_bytes() - before) / clips / 1e6
            rates[name] = max(rates.get(name, 0.0), clips / secs)
    for name, best in rates.items():
        print(
            f"{cache:<6}{stage:<16}{name:<14}{best:>13.1f}"
            f"{math.ceil(H200_CLIPS_PER_S / best):>16d}{disk[name]:>14.2f}"
        )
    for other in ("first window", "row groups"):
        if other in rates:
            ratio = rates["windows"] / rates[other]
            target = " (target >= 1)" if other == "first window" else ""
            print(f"{'':<36}windows / {other} = {ratio:.2f}x{target}")


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
        by_row_group = replace(data, index=replace(data.index, direct_reads=False))

        def train(d: TrainingData) -> Callable[[int], Iterator[np.ndarray]]:
            return lambda epoch: (
                b.waveforms
                for b in d.train_batches(
                    args.batch, seed=0, epoch=epoch, resample=False, buffer_clips=128
                )
            )

        def every_window(d: TrainingData) -> Callable[[int], Iterator[np.ndarray]]:
            every = np.arange(d.index.n_windows)
            return lambda epoch: (w for _, w in ordered_window_batches(d.index, every, args.batch))

        train_loaders = {
            "windows": train(data),
            "row groups": train(by_row_group),
            "first window": lambda epoch: reference_batches(reference, args.batch, epoch),
        }
        files["row groups"] = files["windows"]
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
        print(
            f"{'cache':<6}{'stage':<16}{'format':<14}{'clips/s/core':>13}{'cores per H200':>16}"
            f"{'disk MB/clip':>14}"
        )
        cells = (
            ("read", None, train_loaders),
            ("read + log-mel", log_mel, train_loaders),
            ("every window", None, {"windows": every_window(data),
                                    "row groups": every_window(by_row_group)}),
        )  # fmt: skip
        for stage, per_batch, loaders in cells:
            for cache in ("warm", "cold"):
                timed_cells(stage, cache, loaders, files, per_batch, args.repeats)

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
