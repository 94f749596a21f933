"""Training data: splits, shuffled and sharded batches over the `waveforms/` Parquet dataset.

Each epoch a training track contributes one window (``windows.py``): drawn at random
among its windows, seeded by (seed, epoch), as LAION's ``rand_trunc`` and TTMR++ train
(``train_window="random"``), or its first window (``"first"``, what training did before
whole tracks). Validation and test always use the first window, so epochs compare.

Memory is bounded by a shuffle buffer of a few batches plus one Parquet row
group (<= 64 windows), never by the dataset: the reader keeps an index of where
each window lives and visits row groups one at a time, reading only the drawn
windows' bytes (``pcm_offsets.py``).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from clap_pipeline.dataset import Prompts, TrainingDataError
from clap_pipeline.feedback import feedback_sets
from clap_pipeline.storage import duckdb_connection, table_exists
from clap_pipeline.waveform_reader import WaveformIndex, ordered_window_batches

SPLIT_NAMES = ("train", "validation", "test")
TRAIN_WINDOWS = ("random", "first")  # the window a training track contributes per epoch
SPLIT_MODES = ("fma", "hash", "random_80_20")
# FMA's `set.split` values -> our split names.
FMA_SPLITS = {"training": "train", "validation": "validation", "test": "test"}
REFERENCE_POOL = 100  # the reference recipe: random 80/20 of the first 100 clips


# --------------------------------------------------------------------------- splits


def hash_split(track_id: int) -> str:
    """80/10/10 from a hash of the id alone: a track keeps its split when others arrive."""
    bucket = int.from_bytes(hashlib.sha256(str(int(track_id)).encode()).digest()[:8], "big") % 100
    if bucket < 80:
        return "train"
    return "validation" if bucket < 90 else "test"


@dataclass(frozen=True)
class Splits:
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]
    mode: str
    # How many tracks took FMA's own split (the rest fell back to the hash).
    n_from_fma: int = 0

    def as_dict(self) -> dict[str, list[int]]:
        return {name: list(getattr(self, name)) for name in SPLIT_NAMES}

    def counts(self) -> str:
        return f"train/validation/test = {len(self.train)}/{len(self.validation)}/{len(self.test)}"


def read_fma_splits(duckdb_path: Path | None, track_ids: Iterable[int]) -> dict[int, str]:
    """FMA `set_split` of the given tracks from DuckDB `tracks` (read-only); {} when unavailable."""
    if duckdb_path is None or not Path(duckdb_path).exists():
        return {}
    wanted = pa.table({"track_id": pa.array(sorted(set(track_ids)), pa.int64())})
    with duckdb_connection(duckdb_path, read_only=True) as con:
        if not table_exists(con, "tracks"):
            return {}
        columns = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
        if "set_split" not in columns:
            return {}
        con.register("wanted_ids", wanted)
        rows = con.execute(
            "SELECT t.track_id, t.set_split FROM tracks t JOIN wanted_ids w USING (track_id)"
        ).fetchall()
    return {int(tid): FMA_SPLITS[s] for tid, s in rows if s in FMA_SPLITS}


def assign_splits(
    track_ids: Sequence[int], fma_splits: Mapping[int, str], mode: str, seed: int
) -> Splits:
    """Split usable tracks: FMA's split where known (else hash), hash only, or the 80/20 recipe."""
    if mode not in SPLIT_MODES:
        raise TrainingDataError(f"split must be one of {SPLIT_MODES}, got {mode!r}")
    ids = sorted(int(t) for t in track_ids)
    if mode == "random_80_20":
        pool = np.asarray(ids[:REFERENCE_POOL], dtype=np.int64)
        order = np.random.default_rng(seed).permutation(len(pool))
        n_train = round(0.8 * len(pool))
        return Splits(
            train=tuple(sorted(int(t) for t in pool[order[:n_train]])),
            validation=tuple(sorted(int(t) for t in pool[order[n_train:]])),
            test=(),
            mode=mode,
        )
    buckets: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    n_fma = 0
    for tid in ids:
        if mode == "fma" and tid in fma_splits:
            buckets[fma_splits[tid]].append(tid)
            n_fma += 1
        else:
            buckets[hash_split(tid)].append(tid)
    return Splits(
        train=tuple(buckets["train"]),
        validation=tuple(buckets["validation"]),
        test=tuple(buckets["test"]),
        mode=mode,
        n_from_fma=n_fma,
    )


# --------------------------------------------------------------------------- prompts


def _feedback_version(prompts: Prompts) -> str:
    """Suffix of the prompts' data version when liked queries join them ('' without)."""
    if not prompts.feedback or prompts.feedback_weight <= 0:
        return ""
    payload = json.dumps([prompts.feedback_weight, sorted(prompts.feedback.items())])
    return "+feedback-" + hashlib.sha256(payload.encode()).hexdigest()[:8]


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- waveforms


@dataclass
class ClipBatch:
    track_ids: np.ndarray
    waveforms: np.ndarray  # (B, 240000) float32
    texts: list[str] = field(default_factory=list)
    windows: np.ndarray | None = None  # WaveformIndex positions: which window of each track

    def __len__(self) -> int:
        return len(self.track_ids)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s contiguous share of ``n`` items (sizes differ by <= 1)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def epoch_windows(
    index: WaveformIndex, track_ids: Sequence[int], *, seed: int, epoch: int, mode: str
) -> np.ndarray:
    """The window (a :class:`WaveformIndex` position) each of ``track_ids`` trains on in an
    epoch: its first, or one drawn uniformly among its windows by (seed, epoch) over the
    sorted ids, so that a resumed or repeated run, and every rank, draws the same."""
    if mode not in TRAIN_WINDOWS:
        raise TrainingDataError(f"train_window must be one of {TRAIN_WINDOWS}, got {mode!r}")
    ids = sorted(int(t) for t in track_ids)
    if mode == "first":
        return index.positions(ids)
    counts = index.windows_per_track(ids)
    draws = np.random.default_rng([seed, epoch, 28]).random(len(ids))
    return index.positions(ids, np.minimum((draws * counts).astype(np.int64), counts - 1))


def shuffled_batches(
    index: WaveformIndex,
    positions: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    buffer_clips: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Full batches of (positions, windows) in an order fixed by (seed, epoch), reading each
    row group once.

    Row groups are visited in a shuffled order and their windows pass through a
    shuffle buffer of ``buffer_clips``; the last partial batch is dropped (a tiny
    contrastive batch has almost no negatives). With ``world_size`` > 1, rank
    ``rank`` reads only its contiguous share of the windows in that epoch's row-group
    order (other row groups are never opened) and shuffles it with its own buffer.
    """
    rng = np.random.default_rng([seed, epoch])
    groups = index.groups_of(positions)
    keys = list(groups)
    visits = [(keys[k], groups[keys[k]]) for k in rng.permutation(len(keys)).tolist()]
    if world_size > 1:
        flat = np.concatenate([pos for _, pos in visits]) if visits else np.zeros(0, np.int64)
        start, end = shard_bounds(len(flat), rank, world_size)
        shard = index.groups_of(flat[start:end])
        visits = [(key, shard[key]) for key, _ in visits if key in shard]
        rng = np.random.default_rng([seed, epoch, rank])
    capacity = max(buffer_clips, batch_size)
    buf_pos: list[int] = []
    buf_waves: list[np.ndarray] = []

    def take(n: int) -> tuple[np.ndarray, np.ndarray]:
        picks = sorted(rng.choice(len(buf_pos), size=n, replace=False).tolist(), reverse=True)
        pos = [buf_pos.pop(i) for i in picks]
        waves = [buf_waves.pop(i) for i in picks]
        return np.asarray(pos[::-1], dtype=np.int64), np.stack(waves[::-1])

    for (file_index, row_group), pos in visits:
        buf_pos.extend(int(p) for p in pos)
        buf_waves.extend(index.read_windows(file_index, row_group, pos))  # one array each
        while len(buf_pos) >= capacity:
            yield take(batch_size)
    while len(buf_pos) >= batch_size:
        yield take(batch_size)


def prefetch(batches: Iterator[ClipBatch], depth: int = 2) -> Iterator[ClipBatch]:
    """Read the next batches in a thread while the model computes (pyarrow releases the GIL)."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=worker, daemon=True, name="clap-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- all together


@dataclass
class TrainingData:
    """Prompts, waveform index and splits of the usable tracks (in prompts AND waveforms)."""

    prompts: Prompts
    index: WaveformIndex
    splits: Splits
    prompts_version: str
    n_prompts: int
    n_waveforms: int

    @classmethod
    def load(
        cls,
        prompts_path: Path,
        waveforms_dir: Path,
        duckdb_path: Path | None,
        *,
        split_mode: str,
        seed: int,
        batch_size: int,
        feedback_weight: float = 0.0,
    ) -> TrainingData:
        prompts = Prompts.load(Path(prompts_path))
        if feedback_weight > 0 and duckdb_path is not None:
            liked = feedback_sets(duckdb_path).liked
            prompts = replace(prompts, feedback=liked, feedback_weight=feedback_weight)
        index = WaveformIndex.build(Path(waveforms_dir))
        usable = sorted(set(prompts.prompt) & set(index.locations))
        fma = read_fma_splits(duckdb_path, usable) if split_mode == "fma" else {}
        splits = assign_splits(usable, fma, split_mode, seed)
        data = cls(
            prompts=prompts,
            index=index,
            splits=splits,
            prompts_version=file_fingerprint(Path(prompts_path)) + _feedback_version(prompts),
            n_prompts=len(prompts.prompt),
            n_waveforms=len(index.locations),
        )
        data.check_sizes(batch_size)
        return data

    def describe_counts(self) -> str:
        usable = len(self.splits.train) + len(self.splits.validation) + len(self.splits.test)
        train = set(self.splits.train)
        liked = sum(len(q) for t, q in self.prompts.feedback.items() if t in train)
        feedback = (
            f"; {liked} liked (query, track) pairs from search feedback at weight "
            f"{self.prompts.feedback_weight:g}"
            if liked
            else ""
        )
        return (
            f"{self.n_prompts} prompts, {self.n_waveforms} waveforms, {usable} usable clips "
            f"(in both), split {self.splits.mode!r}: {self.splits.counts()}{feedback}"
        )

    def check_sizes(self, batch_size: int) -> None:
        if len(self.splits.train) < batch_size:
            raise TrainingDataError(
                f"too few training clips for one batch: {len(self.splits.train)} < batch_size "
                f"{batch_size} ({self.describe_counts()}). Lower batch_size or add tracks "
                "(CLAP_MAX_TRACKS)."
            )
        if not self.splits.validation:
            raise TrainingDataError(
                f"the validation split is empty ({self.describe_counts()}): it chooses the "
                "epoch, so add tracks (CLAP_MAX_TRACKS) or use split 'hash'."
            )

    def validation_fingerprint(self) -> str:
        """Identifies the validation set (ids + prompts), to compare models on the same set."""
        payload = [[tid, self.prompts.prompt[tid]] for tid in self.splits.validation]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def train_batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        resample: bool,
        buffer_clips: int,
        rank: int = 0,
        world_size: int = 1,
        window: str = "first",
    ) -> Iterator[ClipBatch]:
        """This rank's training batches of an epoch (all of them for one process), one
        window per track (``window``: :data:`TRAIN_WINDOWS`)."""
        positions = epoch_windows(
            self.index, self.splits.train, seed=seed, epoch=epoch, mode=window
        )
        for pos, waves in shuffled_batches(
            self.index,
            positions,
            batch_size,
            seed=seed,
            epoch=epoch,
            buffer_clips=buffer_clips,
            rank=rank,
            world_size=world_size,
        ):
            ids = self.index.track_ids[pos]
            texts = [
                self.prompts.text_for(int(t), seed=seed, epoch=epoch, resample=resample)
                for t in ids
            ]
            yield ClipBatch(ids, waves, texts, windows=pos)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[ClipBatch]:
        """The split's tracks, in track order, each by its first window (fixed: epochs compare)."""
        positions = self.index.positions(sorted(getattr(self.splits, split)))
        for pos, waves in ordered_window_batches(self.index, positions, batch_size):
            ids = self.index.track_ids[pos]
            yield ClipBatch(ids, waves, [self.prompts.prompt[int(t)] for t in ids], windows=pos)

    def n_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Optimiser steps per epoch: full per-rank batches of the smallest shard."""
        return len(self.splits.train) // world_size // batch_size

    def check_shards(self, batch_size: int, world_size: int) -> None:
        """Every rank's shard must fill one batch (one process: ``check_sizes`` did)."""
        if world_size > 1 and self.n_train_batches(batch_size, world_size) < 1:
            raise TrainingDataError(
                f"too few training clips for {world_size} ranks: {len(self.splits.train)} "
                f"clips give each rank {len(self.splits.train) // world_size} < batch_size "
                f"{batch_size} ({self.describe_counts()}). Lower batch_size or nproc_per_node."
            )
