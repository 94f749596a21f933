"""The data contract between the stages: what a clip is, where a track lives, what each file holds.

Every stage reads and writes the shared data through this module, so a constant,
schema or layout rule is defined once:

- a clip: 5 s of 48 kHz mono float32, :data:`CLIP_SAMPLES` (240,000) samples;
- FMA's audio layout: ``<audio_dir>/NNN/NNNNNN.mp3``, folder ``NNN`` = track_id // 1000
  (:func:`folder_of`, :func:`audio_path`, :func:`audio_name_id`, and :func:`folder_sql`
  for the same rule in DuckDB);
- the DuckDB ``tracks`` table: ``track_id`` plus FMA's 52 columns, typed by kind
  (:data:`FMA_COLUMNS`, :func:`tracks_ddl`);
- ``prompts.parquet`` (:data:`PROMPTS_SCHEMA`, :func:`write_prompts`, :func:`read_prompts`);
- the ``waveforms/NNN.parquet`` dataset (:func:`waveforms_schema`, :func:`waveform_batch`,
  :class:`PartitionWriter`, :func:`write_partition`) and the one reader of its
  ``input_values`` list column, :class:`WaveformRows`;
- the stages' readers of those files: :class:`Prompts` (prompt and renderings per track),
  :class:`WaveformIndex` (where each track's row lives, read a row group at a time) and
  :func:`ordered_batches` (every clip of some tracks in dataset order), raising
  :class:`TrainingDataError` naming the file and row.

Imports no torch and nothing of the project above ``storage`` and ``windows``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clap_pipeline.storage import atomic_path

# A clip (a window): defined with the window rule in windows.py, re-exported here.
from clap_pipeline.windows import CLIP_SAMPLES as CLIP_SAMPLES
from clap_pipeline.windows import CLIP_SECONDS as CLIP_SECONDS
from clap_pipeline.windows import SAMPLE_RATE as SAMPLE_RATE

# --------------------------------------------------------------------------- FMA's audio layout

# NNN/NNNNNN.mp3 has room for six digits: larger ids have no file.
MAX_TRACK_ID = 999_999
TRACKS_PER_FOLDER = 1000
# FMA's file names: six digits, lower-case extension (``000002.mp3``).
_AUDIO_NAME = re.compile(r"(\d{6})\.mp3")


def _checked_id(track_id: int) -> int:
    tid = int(track_id)
    if not 0 <= tid <= MAX_TRACK_ID:
        raise ValueError(
            f"track_id {tid} is outside FMA's audio layout NNN/NNNNNN.mp3 (0 to {MAX_TRACK_ID:,})"
        )
    return tid


def folder_of(track_id: int) -> str:
    """FMA audio folder (and waveforms partition key) of a track: ``000002`` -> ``000``."""
    return f"{_checked_id(track_id) // TRACKS_PER_FOLDER:03d}"


def audio_path(audio_dir: str | Path, track_id: int) -> Path:
    """``<audio_dir>/NNN/NNNNNN.mp3`` as in FMA's releases."""
    return Path(audio_dir) / folder_of(track_id) / f"{_checked_id(track_id):06d}.mp3"


def audio_name_id(folder: str, name: str) -> int | None:
    """The track id of a file name in an audio folder, or None when the layout has no such file.

    ``foo.mp3``, ``42.mp3``, ``000477.MP3`` and a ``001000.mp3`` inside folder ``000`` are
    not FMA clips (the assets ignore them).
    """
    match = _AUDIO_NAME.fullmatch(name)
    if match is None:
        return None
    tid = int(match.group(1))
    return tid if folder_of(tid) == folder else None


def folder_id_range(folder: str) -> range:
    """The track ids that belong to audio folder ``folder`` (``"001"`` -> 1000..1999)."""
    if not folder.isdigit():
        raise ValueError(f"audio folders are digits like '000', got {folder!r}")
    lo = int(folder) * TRACKS_PER_FOLDER
    return range(lo, lo + TRACKS_PER_FOLDER)


def folder_sql(column: str = "track_id") -> str:
    """:func:`folder_of` as a DuckDB expression over an integer ``column`` (ids 0..MAX_TRACK_ID)."""
    return f"lpad(CAST({column} // {TRACKS_PER_FOLDER} AS VARCHAR), 3, '0')"


# --------------------------------------------------------------------------- the `tracks` table

TRACKS_TABLE = "tracks"
SOURCE_TABLE = "tracks_source"  # which tracks.csv (path, sha256) the table holds
# Column kinds of tracks.csv and their DuckDB types.
STR, INT, FLOAT, DATE, STR_LIST, INT_LIST = "str", "int", "float", "date", "str_list", "int_list"
SQL_TYPES = {
    STR: "VARCHAR",
    INT: "BIGINT",
    FLOAT: "DOUBLE",
    DATE: "TIMESTAMP",
    STR_LIST: "VARCHAR[]",
    INT_LIST: "INTEGER[]",
}
# (group, field, kind) of the 52 data columns of tracks.csv, in the file's order (group, then
# field); the table's column is ``<group>_<field>``.
FMA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("album", "comments", INT),
    ("album", "date_created", DATE),
    ("album", "date_released", DATE),
    ("album", "engineer", STR),
    ("album", "favorites", INT),
    ("album", "id", INT),
    ("album", "information", STR),
    ("album", "listens", INT),
    ("album", "producer", STR),
    ("album", "tags", STR_LIST),
    ("album", "title", STR),
    ("album", "tracks", INT),
    ("album", "type", STR),
    ("artist", "active_year_begin", DATE),
    ("artist", "active_year_end", DATE),
    ("artist", "associated_labels", STR),
    ("artist", "bio", STR),
    ("artist", "comments", INT),
    ("artist", "date_created", DATE),
    ("artist", "favorites", INT),
    ("artist", "id", INT),
    ("artist", "latitude", FLOAT),
    ("artist", "location", STR),
    ("artist", "longitude", FLOAT),
    ("artist", "members", STR),
    ("artist", "name", STR),
    ("artist", "related_projects", STR),
    ("artist", "tags", STR_LIST),
    ("artist", "website", STR),
    ("artist", "wikipedia_page", STR),
    ("set", "split", STR),
    ("set", "subset", STR),
    ("track", "bit_rate", INT),
    ("track", "comments", INT),
    ("track", "composer", STR),
    ("track", "date_created", DATE),
    ("track", "date_recorded", DATE),
    ("track", "duration", INT),
    ("track", "favorites", INT),
    ("track", "genre_top", STR),
    ("track", "genres", INT_LIST),
    ("track", "genres_all", INT_LIST),
    ("track", "information", STR),
    ("track", "interest", INT),
    ("track", "language_code", STR),
    ("track", "license", STR),
    ("track", "listens", INT),
    ("track", "lyricist", STR),
    ("track", "number", INT),
    ("track", "publisher", STR),
    ("track", "tags", STR_LIST),
    ("track", "title", STR),
)
COLUMN_KINDS: dict[str, str] = {f"{g}_{f}": kind for g, f, kind in FMA_COLUMNS}
TRACK_COLUMNS: tuple[str, ...] = ("track_id", *COLUMN_KINDS, "lookup_key")
TRACK_COLUMN_TYPES: dict[str, str] = {
    "track_id": "BIGINT",
    **{name: SQL_TYPES[kind] for name, kind in COLUMN_KINDS.items()},
    "lookup_key": "VARCHAR",
}


def tracks_ddl(columns: Sequence[str] = TRACK_COLUMNS[1:], table: str = TRACKS_TABLE) -> str:
    """``CREATE OR REPLACE TABLE tracks`` with ``track_id`` (primary key) and ``columns``.

    The types are those the loader gives; a subset of the columns makes a smaller table
    of the same shape (test fixtures, benchmarks).
    """
    unknown = [c for c in columns if c not in TRACK_COLUMN_TYPES or c == "track_id"]
    if unknown:
        raise ValueError(f"not columns of `{TRACKS_TABLE}` (besides track_id): {unknown}")
    body = ", ".join(
        ["track_id BIGINT PRIMARY KEY", *(f"{c} {TRACK_COLUMN_TYPES[c]}" for c in columns)]
    )
    return f"CREATE OR REPLACE TABLE {table} ({body})"


# --------------------------------------------------------------------------- prompts.parquet

PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("template_id", pa.int32(), nullable=False),
        # One entry per prompt template, None where the template does not apply.
        pa.field("renderings", pa.list_(pa.string()), nullable=False),
    ]
)


def write_prompts(table: pa.Table, path: str | Path) -> Path:
    """Write the Parquet file aside and rename it into place."""
    if table.schema != PROMPTS_SCHEMA:
        raise ValueError(f"prompts table schema {table.schema} is not {PROMPTS_SCHEMA}")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_prompts(path: str | Path) -> pa.Table:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: materialize the `prompts` asset first")
    return pq.read_table(path)


# --------------------------------------------------------------------------- waveforms/

WAVEFORMS_FORMAT_VERSION = "1"
ROW_GROUP_ROWS = 64  # at most, per row group: what a reader holds in memory at once
# "element" is the child name Parquet stores and reads back (compliant nested type).
_VALUES_TYPE = pa.list_(pa.field("element", pa.float32()))
_PARTITION_FILE = re.compile(r"^(\d{3,})\.parquet$")


class WaveformContractError(ValueError):
    """A waveforms row breaks the contract (not exactly CLIP_SAMPLES samples); names the file."""


def waveforms_schema(window_offset_s: float = 0.0) -> pa.Schema:
    """The dataset's schema; the metadata says which window of the source the rows hold."""
    return pa.schema(
        [
            pa.field("track_id", pa.int64(), nullable=False),
            pa.field("input_values", _VALUES_TYPE, nullable=False),  # CLIP_SAMPLES float32
            pa.field("n_samples_decoded", pa.int64(), nullable=False),  # real audio; zeros after
            pa.field("source_path", pa.string(), nullable=False),
            pa.field("source_size", pa.int64(), nullable=False),
            pa.field("source_mtime", pa.float64(), nullable=False),
        ],
        metadata={
            b"clap.waveforms.version": WAVEFORMS_FORMAT_VERSION.encode(),
            b"clap.window_offset_s": repr(float(window_offset_s)).encode(),
            b"clap.sample_rate": str(SAMPLE_RATE).encode(),
        },
    )


def partition_path(waveforms_dir: str | Path, folder: str) -> Path:
    return Path(waveforms_dir) / f"{folder}.parquet"


def iter_partition_files(waveforms_dir: str | Path) -> Iterator[tuple[str, Path]]:
    """(folder, path) of each ``NNN.parquet`` partition, by folder; hidden temp files are not."""
    waveforms_dir = Path(waveforms_dir)
    if not waveforms_dir.is_dir():
        return
    for path in sorted(waveforms_dir.iterdir()):
        match = _PARTITION_FILE.match(path.name)
        if match:
            yield match.group(1), path


def waveform_batch(
    track_ids: Sequence[int] | np.ndarray,
    waveforms: Sequence[np.ndarray] | np.ndarray,
    *,
    n_samples_decoded: Sequence[int] | np.ndarray | None = None,
    source_paths: Sequence[str | Path],
    source_sizes: Sequence[int | None] | np.ndarray,
    source_mtimes: Sequence[float | None] | np.ndarray,
    schema: pa.Schema | None = None,
) -> pa.RecordBatch:
    """Rows of the waveforms dataset (``n_samples_decoded`` defaults to each clip's length).

    Lengths are not checked here, so tests can write rows that break the contract.
    """
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 2:  # (n, samples): no copy
        flat = np.ascontiguousarray(waveforms, dtype=np.float32).reshape(-1)
        lengths = np.full(len(waveforms), waveforms.shape[1], dtype=np.int64)
    else:
        waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        flat = np.concatenate(waves) if waves else np.zeros(0, dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] > np.iinfo(np.int32).max:  # Arrow's list offsets are int32
        raise ValueError(f"{len(lengths)} clips are too many for one batch: write fewer at a time")
    offsets = offsets.astype(np.int32)
    schema = schema or waveforms_schema()
    values = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(flat, pa.float32()), type=_VALUES_TYPE
    )
    decoded = lengths if n_samples_decoded is None else np.asarray(n_samples_decoded, np.int64)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(track_ids, dtype=np.int64), pa.int64()),
            values,
            pa.array(decoded, pa.int64()),
            pa.array([str(p) for p in source_paths], pa.string()),
            pa.array(source_sizes, pa.int64()),
            pa.array(source_mtimes, pa.float64()),
        ],
        schema=schema,
    )


class PartitionWriter:
    """Writes a partition's row groups on a background thread: one written while the next fills."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._schema = schema
        # Uncompressed audio: floats barely compress and writing must keep up with
        # all cores decoding; statistics only where they help filtering.
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression="none",
            use_dictionary=False,
            write_statistics=["track_id", "n_samples_decoded"],
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending: Future[None] | None = None

    def write(self, batches: list[pa.RecordBatch]) -> None:
        """Write ``batches`` as one row group (at most ``ROW_GROUP_ROWS`` rows)."""
        if self._pending is not None:
            self._pending.result()
        table = pa.Table.from_batches(batches, schema=self._schema)
        self._pending = self._thread.submit(self._writer.write_table, table, table.num_rows)

    def close(self) -> None:
        try:
            if self._pending is not None:
                self._pending.result()
        finally:
            self._thread.shutdown(wait=True)
            self._writer.close()


def write_partition(
    path: str | Path, rows: pa.RecordBatch, row_group_rows: int = ROW_GROUP_ROWS
) -> Path:
    """Write a whole partition file atomically (rows sorted by track_id, as the contract says)."""
    ids = rows.column(0).to_numpy()
    if (np.diff(ids) <= 0).any():
        raise ValueError(f"{path}: rows must be sorted by unique track_id")
    with atomic_path(path) as tmp:
        writer = PartitionWriter(tmp, rows.schema)
        try:
            for start in range(0, rows.num_rows, row_group_rows):
                writer.write([rows.slice(start, row_group_rows)])
        finally:
            writer.close()
    return Path(path)


class WaveformRows:
    """The ``track_id`` and ``input_values`` columns of some waveforms rows, decoded to numpy.

    The one reader of the list column: the dataset build's health scan, training and the
    embedding of the collection all go through it. Zero-copy where Arrow allows.
    """

    def __init__(self, rows: pa.Table | pa.RecordBatch, origin: str | Path) -> None:
        self.origin = str(origin)
        column = rows.column("input_values")
        if isinstance(column, pa.ChunkedArray):
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        # A sliced list array keeps its offsets into the unsliced child (`.values`).
        self._offsets = column.offsets.to_numpy()
        self._values = column.values.to_numpy(zero_copy_only=False)
        self.track_ids = np.asarray(rows.column("track_id").to_numpy(), dtype=np.int64)
        self.lengths = np.diff(self._offsets)

    def __len__(self) -> int:
        return len(self.track_ids)

    def samples(self, row: int) -> np.ndarray:
        """Row ``row``'s samples, whatever their number (read-only view)."""
        return self._values[self._offsets[row] : self._offsets[row + 1]]

    def bad_length_rows(self) -> np.ndarray:
        """Positions of the rows without exactly ``CLIP_SAMPLES`` samples."""
        return np.flatnonzero(self.lengths != CLIP_SAMPLES)

    def clips(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """A writable float32 array (n, CLIP_SAMPLES) of ``rows`` (default: all, in order).

        Raises :class:`WaveformContractError` naming the file and track when a requested
        row does not hold exactly ``CLIP_SAMPLES`` samples.
        """
        picked = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        wrong = picked[self.lengths[picked] != CLIP_SAMPLES]
        if wrong.size:
            i = int(wrong[0])
            raise WaveformContractError(
                f"{self.origin}: track_id {self.track_ids[i]} has {self.lengths[i]} samples in "
                f"`input_values`, expected {CLIP_SAMPLES} (48 kHz x 5 s); "
                "re-materialize `waveforms`"
            )
        starts = self._offsets[picked]
        if picked.size and (np.diff(starts) == CLIP_SAMPLES).all():  # contiguous rows: one copy
            block = self._values[starts[0] : starts[0] + picked.size * CLIP_SAMPLES]
            return np.array(block, dtype=np.float32).reshape(-1, CLIP_SAMPLES)
        out = np.empty((picked.size, CLIP_SAMPLES), dtype=np.float32)
        for k, start in enumerate(starts.tolist()):
            out[k] = self._values[start : start + CLIP_SAMPLES]
        return out


# --------------------------------------------------------------------------- readers


class TrainingDataError(ValueError):
    """Prompts or waveforms a stage reads are missing, malformed or too few; the message names
    the file, row or counts (the name is historical: evaluation and search raise it too)."""


@dataclass(frozen=True)
class Prompts:
    """Text side of each track: the stored prompt and the template renderings (None = n/a)."""

    prompt: dict[int, str]
    renderings: dict[int, tuple[str | None, ...]]
    # Listeners' liked queries per track (feedback.py) and the chance that one of them is
    # a training track's text in an epoch instead of its prompt.
    feedback: dict[int, tuple[str, ...]] = field(default_factory=dict)
    feedback_weight: float = 0.0

    @classmethod
    def load(cls, path: Path) -> Prompts:
        if not path.exists():
            raise TrainingDataError(f"{path} does not exist: materialize the `prompts` asset first")
        table = pq.read_table(path)
        missing = {"track_id", "prompt"} - set(table.column_names)
        if missing:
            raise TrainingDataError(f"{path} lacks column(s) {sorted(missing)}")
        ids = table.column("track_id").to_pylist()
        texts = table.column("prompt").to_pylist()
        renderings = (
            table.column("renderings").to_pylist()
            if "renderings" in table.column_names
            else [None] * len(ids)
        )
        prompt: dict[int, str] = {}
        rendered: dict[int, tuple[str | None, ...]] = {}
        for row, (tid, text, options) in enumerate(zip(ids, texts, renderings, strict=True)):
            if tid is None or not text:
                raise TrainingDataError(f"{path} row {row}: empty track_id or prompt")
            if tid in prompt:
                raise TrainingDataError(f"{path}: track_id {tid} appears twice")
            prompt[int(tid)] = str(text)
            rendered[int(tid)] = tuple(options) if options else ()
        return cls(prompt=prompt, renderings=rendered)

    def text_for(self, track_id: int, *, seed: int, epoch: int, resample: bool) -> str:
        """The stored prompt, or (``resample``) one of its renderings chosen by (seed, epoch, id).

        A track with liked queries gets one of them instead with probability
        ``feedback_weight`` per epoch (drawn from the same kind of hash).
        """
        liked = self.feedback.get(track_id, ())
        if liked and self.feedback_weight > 0:
            digest = hashlib.sha256(f"feedback:{seed}:{epoch}:{track_id}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < self.feedback_weight:
                return liked[int.from_bytes(digest[8:16], "big") % len(liked)]
        options = [t for t in self.renderings.get(track_id, ()) if t]
        if not resample or not options:
            return self.prompt[track_id]
        digest = hashlib.sha256(f"{seed}:{epoch}:{track_id}".encode()).digest()
        return options[int.from_bytes(digest[:8], "big") % len(options)]


@dataclass(frozen=True)
class RowLocation:
    file_index: int
    row_group: int
    row: int


@dataclass
class WaveformIndex:
    """Where each track's waveform lives in the Parquet dataset (file, row group, row)."""

    root: Path
    files: list[Path]
    locations: dict[int, RowLocation]
    data_version: str

    @classmethod
    def build(cls, root: Path) -> WaveformIndex:
        root = Path(root)
        if not root.is_dir():
            raise TrainingDataError(
                f"{root} does not exist: materialize the `waveforms` asset first"
            )
        # pyarrow's discovery skips hidden ("."/"_") temp files of in-flight writes.
        files = sorted(Path(f) for f in ds.dataset(root, format="parquet").files)
        locations: dict[int, RowLocation] = {}
        version = hashlib.sha256()
        for file_index, path in enumerate(files):
            pf = pq.ParquetFile(path)
            names = set(pf.schema_arrow.names)
            if not {"track_id", "input_values"} <= names:
                raise TrainingDataError(f"{path} lacks track_id/input_values columns")
            provenance = [c for c in ("source_size", "source_mtime") if c in names]
            version.update(f"{path.name}:{path.stat().st_size}".encode())
            for rg in range(pf.num_row_groups):
                small = pf.read_row_group(rg, columns=["track_id", *provenance])
                ids = small.column("track_id").to_pylist()
                for row, tid in enumerate(ids):
                    if tid in locations:
                        other = files[locations[tid].file_index]
                        raise TrainingDataError(
                            f"track_id {tid} appears twice in the waveforms: {other} and {path}"
                        )
                    locations[int(tid)] = RowLocation(file_index, rg, row)
                version.update(json.dumps(small.to_pydict(), sort_keys=True).encode())
        return cls(
            root=root, files=files, locations=locations, data_version=version.hexdigest()[:16]
        )

    def read_rows(
        self, file_index: int, row_group: int, rows: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(track_ids, float32 waveforms (n, 240000)) for the given rows of one row group."""
        path = self.files[file_index]
        table = pq.ParquetFile(path).read_row_group(row_group, columns=["track_id", "input_values"])
        rows_arr = np.asarray(rows, dtype=np.int64)
        waveforms = WaveformRows(table, path)
        try:
            return waveforms.track_ids[rows_arr], waveforms.clips(rows_arr)
        except WaveformContractError as exc:
            raise TrainingDataError(str(exc)) from exc

    def groups_of(self, track_ids: Iterable[int]) -> dict[tuple[int, int], list[int]]:
        """Rows to read per (file, row group) for the given tracks, in dataset order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for tid in track_ids:
            loc = self.locations[tid]
            groups.setdefault((loc.file_index, loc.row_group), []).append(loc.row)
        return {key: sorted(groups[key]) for key in sorted(groups)}


def ordered_batches(
    index: WaveformIndex, track_ids: Sequence[int], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All clips of ``track_ids`` in dataset order (= track_id order), last batch partial."""
    buf_ids: list[np.ndarray] = []
    buf_waves: list[np.ndarray] = []
    n = 0
    for (file_index, row_group), rows in index.groups_of(sorted(track_ids)).items():
        ids, waves = index.read_rows(file_index, row_group, rows)
        buf_ids.append(ids)
        buf_waves.append(waves)
        n += len(ids)
        while n >= batch_size:
            all_ids, all_waves = np.concatenate(buf_ids), np.concatenate(buf_waves)
            yield all_ids[:batch_size], all_waves[:batch_size]
            buf_ids, buf_waves = [all_ids[batch_size:]], [all_waves[batch_size:]]
            n -= batch_size
    if n:
        yield np.concatenate(buf_ids), np.concatenate(buf_waves)
