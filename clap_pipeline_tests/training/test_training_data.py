"""Splits, prompts and the streaming waveform reader (no model involved)."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clap_pipeline.dataset import (
    CLIP_SAMPLES,
    Prompts,
    TrainingDataError,
    pcm_batch,
    write_partition,
)
from clap_pipeline.demo.training_set import write_waveforms_file
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.training.data import (
    TrainingData,
    assign_splits,
    epoch_windows,
    hash_split,
    prefetch,
    read_fma_splits,
    shuffled_batches,
)
from clap_pipeline.waveform_reader import WaveformIndex, ordered_batches, ordered_window_batches
from clap_pipeline.windows import to_pcm16

# ----------------------------------------------------------------------------- splits


def test_hash_split_is_80_10_10_and_independent_of_other_tracks() -> None:
    ids = list(range(1, 20_001))
    counts = Counter(hash_split(t) for t in ids)
    assert abs(counts["train"] / len(ids) - 0.8) < 0.015
    assert abs(counts["validation"] / len(ids) - 0.1) < 0.01
    assert abs(counts["test"] / len(ids) - 0.1) < 0.01
    # A track keeps its split when new tracks arrive.
    before = assign_splits(ids[:500], {}, "hash", seed=0)
    after = assign_splits(ids[:500] + ids[10_000:10_300], {}, "hash", seed=0)
    for name in ("train", "validation", "test"):
        assert set(getattr(before, name)) <= set(getattr(after, name))


def test_fma_split_wins_where_known_and_hash_fills_the_rest() -> None:
    ids = list(range(100, 160))
    fma = {100: "test", 101: "validation", 102: "train"}
    splits = assign_splits(ids, fma, "fma", seed=0)
    assert 100 in splits.test and 101 in splits.validation and 102 in splits.train
    assert splits.n_from_fma == 3
    for tid in ids[3:]:
        assert tid in getattr(splits, hash_split(tid))
    # "hash" ignores FMA's split entirely.
    hashed = assign_splits(ids, fma, "hash", seed=0)
    assert hashed.n_from_fma == 0
    assert 100 in getattr(hashed, hash_split(100))


def test_random_80_20_takes_the_first_100_clips_with_a_fixed_seed() -> None:
    ids = list(range(1, 131))
    a = assign_splits(ids, {}, "random_80_20", seed=0)
    assert len(a.train) == 80 and len(a.validation) == 20 and a.test == ()
    assert set(a.train) | set(a.validation) == set(range(1, 101))
    assert assign_splits(list(reversed(ids)), {}, "random_80_20", seed=0) == a
    assert assign_splits(ids, {}, "random_80_20", seed=1).validation != a.validation


def test_unknown_split_mode_is_rejected() -> None:
    with pytest.raises(TrainingDataError, match="random_80_20"):
        assign_splits([1, 2], {}, "kfold", seed=0)


def test_read_fma_splits_from_duckdb(tmp_path: Path) -> None:
    db = tmp_path / "clap.duckdb"
    assert read_fma_splits(db, [1, 2]) == {}  # no file yet
    with duckdb_connection(db) as con:
        con.execute("CREATE TABLE genres (genre_id INT)")
    assert read_fma_splits(db, [1, 2]) == {}  # no tracks table
    with duckdb_connection(db) as con:
        con.execute("CREATE TABLE tracks (track_id BIGINT, track_title VARCHAR)")
    assert read_fma_splits(db, [1, 2]) == {}  # no set_split column
    with duckdb_connection(db) as con:
        con.execute("DROP TABLE tracks")
        con.execute("CREATE TABLE tracks (track_id BIGINT, set_split VARCHAR)")
        con.execute(
            "INSERT INTO tracks VALUES (1, 'training'), (2, 'validation'), (3, 'test'), "
            "(4, NULL), (5, 'training')"
        )
    assert read_fma_splits(db, [1, 2, 3, 4]) == {1: "train", 2: "validation", 3: "test"}


# ----------------------------------------------------------------------------- prompts


def write_prompts(path: Path, ids: list[int], renderings: list[list[str | None]] | None = None):
    renderings = renderings or [[f"song {t}", None, f"music {t}", None, None] for t in ids]
    pq.write_table(
        pa.table(
            {
                "track_id": pa.array(ids, pa.int64()),
                "prompt": pa.array([r[0] for r in renderings]),
                "template_id": pa.array([0] * len(ids), pa.int32()),
                "renderings": pa.array(renderings, pa.list_(pa.string())),
            }
        ),
        path,
    )


def test_prompt_resampling_is_deterministic_and_skips_null_renderings(tmp_path: Path) -> None:
    write_prompts(tmp_path / "p.parquet", [7])
    prompts = Prompts.load(tmp_path / "p.parquet")
    assert prompts.text_for(7, seed=0, epoch=1, resample=False) == "song 7"
    drawn = {prompts.text_for(7, seed=0, epoch=e, resample=True) for e in range(1, 40)}
    assert drawn == {"song 7", "music 7"}
    assert prompts.text_for(7, seed=3, epoch=5, resample=True) == prompts.text_for(
        7, seed=3, epoch=5, resample=True
    )


def test_prompts_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="materialize the `prompts` asset"):
        Prompts.load(tmp_path / "missing.parquet")
    write_prompts(tmp_path / "dup.parquet", [3, 3])
    with pytest.raises(TrainingDataError, match=r"dup\.parquet: track_id 3 appears twice"):
        Prompts.load(tmp_path / "dup.parquet")


# ----------------------------------------------------------------------------- waveforms


SCALE = 2048.0  # a clip's value is its id / SCALE: exact in 16-bit PCM for ids < 2048


def constant_clips(ids: list[int]) -> list[np.ndarray]:
    """Clip of track t is filled with t / SCALE, so a read can be checked against its id."""
    return [np.full(CLIP_SAMPLES, t / SCALE, dtype=np.float32) for t in ids]


@pytest.fixture(scope="module")
def wave_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("waveforms")
    first, second = list(range(1, 24)), list(range(1000, 1017))
    write_waveforms_file(root / "000.parquet", first, constant_clips(first), row_group_rows=5)
    write_waveforms_file(root / "001.parquet", second, constant_clips(second), row_group_rows=5)
    (root / ".001.parquet.abc.tmp").write_bytes(b"partial write")  # ignored: hidden
    return root


class CountingIndex(WaveformIndex):
    """The real index, counting row-group reads and rows held, to check the memory bound."""

    reads: Counter
    rows_read: int

    def read_windows(self, file_index, row_group, positions):
        self.reads[(file_index, row_group)] += 1
        self.rows_read += len(positions)
        return super().read_windows(file_index, row_group, positions)


def counting_index(root: Path) -> CountingIndex:
    built = WaveformIndex.build(root)
    index = CountingIndex(**{f.name: getattr(built, f.name) for f in fields(built)})
    index.reads, index.rows_read = Counter(), 0
    return index


def test_index_locates_every_track_and_reads_the_right_rows(wave_dir: Path) -> None:
    index = WaveformIndex.build(wave_dir)
    assert [p.name for p in index.files] == ["000.parquet", "001.parquet"]
    assert len(index.locations) == 23 + 17
    ids, waves = index.read_rows(1, 2, [0, 3])  # rows 10 and 13 of 001.parquet
    assert ids.tolist() == [1010, 1013]
    assert waves.shape == (2, CLIP_SAMPLES) and waves.dtype == np.float32
    assert np.all(waves[:, :5] == np.array([[1010.0], [1013.0]]) / SCALE)
    assert index.n_windows == 40 and index.windows_per_track([3, 1016]).tolist() == [1, 1]


def test_shuffled_batches_cover_each_clip_once_in_a_seeded_order(wave_dir: Path) -> None:
    index = counting_index(wave_dir)
    train = [t for t in index.locations if t % 3 != 0]  # 27 tracks
    batch_size, buffer_clips = 4, 8
    biggest_row_group = 5
    held_max = 0
    batches = []
    for pos, waves in shuffled_batches(
        index, index.positions(train), batch_size, seed=0, epoch=1, buffer_clips=buffer_clips
    ):
        ids = index.track_ids[pos]
        batches.append(ids.tolist())
        assert np.all(waves[:, 0] == ids / SCALE)  # waveform matches its id
        held = index.rows_read - sum(len(b) for b in batches)
        held_max = max(held_max, held)
    flat = [t for b in batches for t in b]
    assert len(batches) == len(train) // batch_size  # the last partial batch is dropped
    assert len(flat) == len(set(flat)) and set(flat) <= set(train)
    assert set(index.reads.values()) == {1}  # every row group read once per epoch
    # Memory: at most the shuffle buffer plus one row group, never the dataset.
    assert held_max <= buffer_clips + biggest_row_group
    assert held_max < len(train)

    def order(seed: int, epoch: int) -> list[list[int]]:
        return [
            index.track_ids[pos].tolist()
            for pos, _ in shuffled_batches(
                index,
                index.positions(train),
                batch_size,
                seed=seed,
                epoch=epoch,
                buffer_clips=buffer_clips,
            )
        ]

    assert order(0, 1) == batches
    assert order(0, 2) != batches
    assert order(1, 1) != batches


def test_ordered_batches_return_all_clips_sorted(wave_dir: Path) -> None:
    index = WaveformIndex.build(wave_dir)
    wanted = [1016, 3, 1000, 7, 22, 5]
    got = [ids.tolist() for ids, _ in ordered_batches(index, wanted, 4)]
    assert got == [[3, 5, 7, 22], [1000, 1016]]


@pytest.fixture(scope="module")
def windows_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tracks 1..12 with 1 + (t % 4) windows each; window k of track t holds (t + k/8) / 64."""
    root = tmp_path_factory.mktemp("windows")
    ids, starts, waves = [], [], []
    for t in range(1, 13):
        for k in range(1 + t % 4):
            ids.append(t)
            starts.append(5.0 * k)
            waves.append(np.full(CLIP_SAMPLES, (t + k / 8) / 64, dtype=np.float32))
    write_waveforms_file(root / "000.parquet", ids, waves, row_group_rows=7, start_s=starts)
    return root


def _window_of(waves: np.ndarray, ids: np.ndarray) -> list[int]:
    """The window index each row holds (its value is (t + k/8) / 64)."""
    return [round((w[0] * 64 - t) * 8) for w, t in zip(waves, ids, strict=True)]


def test_every_window_is_indexed_and_read_in_order(windows_dir: Path) -> None:
    index = WaveformIndex.build(windows_dir)
    assert index.n_windows == sum(1 + t % 4 for t in range(1, 13))
    assert index.windows_per_track([3, 4]).tolist() == [4, 1]
    assert index.start_s[index.positions([3], "all")].tolist() == [0.0, 5.0, 10.0, 15.0]
    pos, waves = zip(*ordered_window_batches(index, index.positions([3, 2], "all"), 3), strict=True)
    flat_pos = np.concatenate(pos)
    assert index.track_ids[flat_pos].tolist() == [2, 2, 2, 3, 3, 3, 3]  # dataset order
    assert _window_of(np.concatenate(waves), index.track_ids[flat_pos]) == [0, 1, 2, 0, 1, 2, 3]
    ids, first = next(ordered_batches(index, [3, 2], 8))  # the first windows
    assert ids.tolist() == [2, 3] and _window_of(first, ids) == [0, 0]


def test_a_random_window_per_track_per_epoch_seeded(windows_dir: Path) -> None:
    index = WaveformIndex.build(windows_dir)
    tracks = list(range(1, 13))

    def drawn(seed: int, epoch: int) -> list[int]:
        pos = epoch_windows(index, tracks, seed=seed, epoch=epoch, mode="random")
        assert index.track_ids[pos].tolist() == tracks  # one window of every track
        return (pos - index.positions(tracks)).tolist()

    assert drawn(0, 1) == drawn(0, 1)  # a repeated or resumed run draws the same
    assert drawn(0, 1) != drawn(0, 2) and drawn(0, 1) != drawn(1, 1)
    seen = {t: {drawn(0, e)[t - 1] for e in range(1, 60)} for t in tracks}
    assert seen == {t: set(range(1 + t % 4)) for t in tracks}  # every window, over epochs
    first = epoch_windows(index, tracks, seed=0, epoch=3, mode="first")
    assert first.tolist() == index.positions(tracks).tolist()
    with pytest.raises(TrainingDataError, match="train_window"):
        epoch_windows(index, tracks, seed=0, epoch=1, mode="middle")


def test_wrong_clip_length_and_duplicates_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    pcm = [to_pcm16(constant_clips([1])[0]), b"\x00" * 2001]  # an odd number of bytes
    write_partition(bad / "000.parquet", pcm_batch([1, 2], [0, 0], pcm, ["a", "b"], [1, 1], [0, 0]))
    index = WaveformIndex.build(bad)
    with pytest.raises(TrainingDataError, match=r"000\.parquet: track_id 2 window at 0 s has 2001"):
        list(ordered_batches(index, [1, 2], 2))
    dup = tmp_path / "dup"
    dup.mkdir()
    write_waveforms_file(dup / "000.parquet", [1], constant_clips([1]))
    write_waveforms_file(dup / "001.parquet", [1], constant_clips([1]))
    with pytest.raises(TrainingDataError, match="track_id 1 appears twice"):
        WaveformIndex.build(dup)
    with pytest.raises(TrainingDataError, match="materialize the `waveforms` asset"):
        WaveformIndex.build(tmp_path / "nowhere")


def test_prefetch_keeps_order_and_reraises_errors() -> None:
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise TrainingDataError("broken row group")

    got = []
    with pytest.raises(TrainingDataError, match="broken row group"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


# ----------------------------------------------------------------------------- together


def test_training_data_uses_tracks_in_both_inputs_and_reports_counts(
    tmp_path: Path, wave_dir: Path
) -> None:
    # prompts: 1..23 (waveforms) + 500, 501 (no audio); waveforms also hold 1000..1016 (no prompt)
    write_prompts(tmp_path / "prompts.parquet", [*range(1, 24), 500, 501])
    data = TrainingData.load(
        tmp_path / "prompts.parquet", wave_dir, None, split_mode="random_80_20", seed=0,
        batch_size=4,
    )  # fmt: skip
    usable = set(data.splits.train) | set(data.splits.validation)
    assert usable == set(range(1, 24))
    assert (len(data.splits.train), len(data.splits.validation)) == (18, 5)
    assert data.n_train_batches(4) == 4
    batch = next(data.eval_batches("validation", 8))
    assert batch.texts == [f"song {t}" for t in batch.track_ids]

    with pytest.raises(TrainingDataError) as err:
        TrainingData.load(
            tmp_path / "prompts.parquet", wave_dir, None, split_mode="random_80_20", seed=0,
            batch_size=32,
        )  # fmt: skip
    msg = str(err.value)
    assert "18 < batch_size 32" in msg
    assert "25 prompts, 40 waveforms, 23 usable clips" in msg
    assert "train/validation/test = 18/5/0" in msg


def test_empty_validation_is_a_clear_error(tmp_path: Path, wave_dir: Path) -> None:
    write_prompts(tmp_path / "prompts.parquet", list(range(1, 24)))
    db = tmp_path / "clap.duckdb"
    with duckdb_connection(db) as con:
        con.execute("CREATE TABLE tracks AS SELECT range AS track_id, 'training' AS set_split "
                    "FROM range(1, 24)")  # fmt: skip
    with pytest.raises(TrainingDataError, match=r"validation split is empty .*23/0/0"):
        TrainingData.load(
            tmp_path / "prompts.parquet", wave_dir, db, split_mode="fma", seed=0, batch_size=4
        )


def test_data_versions_follow_content(tmp_path: Path, wave_dir: Path) -> None:
    write_prompts(tmp_path / "prompts.parquet", list(range(1, 24)))
    base = TrainingData.load(
        tmp_path / "prompts.parquet", wave_dir, None, split_mode="hash", seed=0, batch_size=2
    )
    renderings = [[f"song {t}", None, None, None, None] for t in range(1, 24)]
    val = base.splits.validation[0]
    renderings[val - 1][0] = "a different prompt"
    write_prompts(tmp_path / "prompts.parquet", list(range(1, 24)), renderings)
    changed = TrainingData.load(
        tmp_path / "prompts.parquet", wave_dir, None, split_mode="hash", seed=0, batch_size=2
    )
    assert changed.prompts_version != base.prompts_version
    assert changed.validation_fingerprint() != base.validation_fingerprint()
    assert changed.index.data_version == base.index.data_version


def test_train_batches_resample_prompts_per_epoch(tmp_path: Path, wave_dir: Path) -> None:
    write_prompts(tmp_path / "prompts.parquet", list(range(1, 24)))
    data = TrainingData.load(
        tmp_path / "prompts.parquet", wave_dir, None, split_mode="hash", seed=0, batch_size=4
    )

    def texts(epoch: int, resample: bool) -> dict[int, str]:
        batches = data.train_batches(4, seed=0, epoch=epoch, resample=resample, buffer_clips=8)
        return {int(t): text for b in batches for t, text in zip(b.track_ids, b.texts, strict=True)}

    fixed = texts(1, resample=False)
    assert all(text == f"song {t}" for t, text in fixed.items())
    drawn = [texts(epoch, resample=True) for epoch in (1, 2, 3)]
    for by_track in drawn:
        assert all(text in (f"song {t}", f"music {t}") for t, text in by_track.items())
    assert any(text.startswith("music") for by_track in drawn for text in by_track.values())
    common = set(drawn[0]) & set(drawn[1])
    assert any(drawn[0][t] != drawn[1][t] for t in common)  # a new draw each epoch
    assert texts(2, resample=True) == drawn[1]  # fixed by (seed, epoch)
