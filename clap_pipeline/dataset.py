"""The data contract between the stages: what a clip is, where a track lives, what each file holds.

Every stage reads and writes the shared data through this module, so a constant,
schema or layout rule is defined once:

- a clip (a window of a track, ``windows.py``): 5 s of 48 kHz mono, :data:`CLIP_SAMPLES`
  (240,000) samples, float32 when read;
- FMA's audio layout: ``<audio_dir>/NNN/NNNNNN.mp3``, folder ``NNN`` = track_id // 1000
  (:func:`folder_of`, :func:`audio_path`, :func:`audio_name_id`, and :func:`folder_sql`
  for the same rule in DuckDB);
- the DuckDB ``tracks`` table: ``track_id`` plus FMA's 52 columns, typed by kind
  (:data:`FMA_COLUMNS`, :func:`tracks_ddl`);
- ``prompts.parquet`` (:data:`PROMPTS_SCHEMA`, :func:`write_prompts`, :func:`read_prompts`);
- the ``waveforms/NNN.parquet`` dataset, one row per window in 16-bit PCM
  (:func:`waveforms_schema`, :func:`waveform_batch`, :func:`pcm_batch`,
  :class:`PartitionWriter`, :func:`write_partition`; its reader is ``waveform_reader.py``);
- the prompts' reader :class:`Prompts` (prompt and renderings per track), raising
  :class:`TrainingDataError` naming the file and row.

Imports no torch and nothing of the project above ``storage`` and ``windows``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clap_pipeline.storage import atomic_path

# A clip (a window): defined with the window rule in windows.py, re-exported here.
from clap_pipeline.windows import CLIP_SAMPLES as CLIP_SAMPLES
from clap_pipeline.windows import CLIP_SECONDS as CLIP_SECONDS
from clap_pipeline.windows import SAMPLE_RATE as SAMPLE_RATE
from clap_pipeline.windows import WindowRule, to_pcm16

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
        # One entry per prompt template, None where the template does not apply, then the
        # track's captions from CLAP_CAPTIONS (metadata/captions.py), if any.
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

WAVEFORMS_FORMAT_VERSION = "2"  # 2: one row per window, 16-bit PCM (1: first window, float32)
ROW_GROUP_ROWS = 64  # windows, at most, per row group: what a reader holds in memory at once
_PARTITION_FILE = re.compile(r"^(\d{3,})\.parquet$")
READ_COLUMNS = ["track_id", "start_s", "pcm"]  # what the readers of samples need
_PAGE_BYTES = 1 << 30  # more than a row group's PCM: one data page per column chunk


def waveforms_schema(rule: WindowRule | None = None) -> pa.Schema:
    """The dataset's schema (docs/windows.md); the metadata says which windows the rows hold."""
    rule = rule or WindowRule()
    return pa.schema(
        [
            pa.field("track_id", pa.int64(), nullable=False),
            pa.field("start_s", pa.float64(), nullable=False),  # WindowRule.start_s
            pa.field("pcm", pa.binary(), nullable=False),  # real samples, s16le (to_pcm16)
            pa.field("n_samples_decoded", pa.int64(), nullable=False),  # real samples
            pa.field("source_path", pa.string(), nullable=False),
            pa.field("source_size", pa.int64(), nullable=False),
            pa.field("source_mtime", pa.float64(), nullable=False),
        ],
        metadata={
            "clap.waveforms.version": WAVEFORMS_FORMAT_VERSION,
            "clap.sample_rate": str(SAMPLE_RATE),
            "clap.sample_format": "s16le",
            **rule.metadata(),
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
    start_s: Sequence[float] | np.ndarray | None = None,
    n_samples_decoded: Sequence[int] | np.ndarray | None = None,
    source_paths: Sequence[str | Path],
    source_sizes: Sequence[int | None] | np.ndarray,
    source_mtimes: Sequence[float | None] | np.ndarray,
    schema: pa.Schema | None = None,
) -> pa.RecordBatch:
    """Rows of the waveforms dataset, one per window: float samples in, 16-bit PCM stored.

    Each row stores the first ``n_samples_decoded`` samples of its window (default: all of
    them); ``start_s`` defaults to 0 (a track's first window). Lengths are not checked
    here, so tests can write rows that break the contract.
    """
    counts = (
        [len(w) for w in waveforms]
        if n_samples_decoded is None
        else [int(c) for c in n_samples_decoded]
    )
    pcm = [to_pcm16(np.asarray(w).reshape(-1)[:c]) for w, c in zip(waveforms, counts, strict=True)]
    starts = np.zeros(len(track_ids)) if start_s is None else start_s
    return pcm_batch(
        track_ids, starts, pcm, source_paths, source_sizes, source_mtimes, schema=schema
    )


def pcm_batch(
    track_ids: Sequence[int] | np.ndarray,
    start_s: Sequence[float] | np.ndarray,
    pcm: Sequence[bytes],
    source_paths: Sequence[str | Path],
    source_sizes: Sequence[int | None] | np.ndarray,
    source_mtimes: Sequence[float | None] | np.ndarray,
    *,
    schema: pa.Schema | None = None,
) -> pa.RecordBatch:
    """Rows of the waveforms dataset from windows already in 16-bit PCM (``to_pcm16``)."""
    if sum(len(p) for p in pcm) > np.iinfo(np.int32).max:  # Arrow's binary offsets are int32
        raise ValueError(f"{len(pcm)} windows are too many for one batch: write fewer at a time")
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(track_ids, dtype=np.int64), pa.int64()),
            pa.array(np.asarray(start_s, dtype=np.float64), pa.float64()),
            pa.array(pcm, pa.binary()),
            pa.array([len(p) // 2 for p in pcm], pa.int64()),
            pa.array([str(p) for p in source_paths], pa.string()),
            pa.array(source_sizes, pa.int64()),
            pa.array(source_mtimes, pa.float64()),
        ],
        schema=schema or waveforms_schema(),
    )


class PartitionWriter:
    """Writes a partition's rows in row groups of ``row_group_rows`` (the last one fewer) on a
    background thread: one row group written while the next fills."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self._schema = schema
        self._rows = row_group_rows
        self._pending: list[pa.RecordBatch] = []
        self._n = 0
        # Uncompressed PCM: music barely compresses with general-purpose codecs (zstd: 3-7 %
        # at ~250 MB/s, docs/windows.md) and a training epoch must keep up. A track's
        # windows repeat its id and source: dictionary-encoded, they cost ~1 byte a window.
        # Statistics only where they help filtering. One PLAIN data page per column chunk:
        # a window's bytes are then found by offset and read alone (pcm_offsets.py).
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression="none",
            use_dictionary=["track_id", "source_path", "source_size", "source_mtime"],
            column_encoding={"pcm": "PLAIN"},
            write_statistics=["track_id", "start_s", "n_samples_decoded"],
            data_page_size=_PAGE_BYTES,
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._writing: Future[None] | None = None

    def add(self, batches: list[pa.RecordBatch]) -> None:
        """Rows to write; every ``row_group_rows`` of them make a row group."""
        self._pending += batches
        self._n += sum(b.num_rows for b in batches)
        while self._n >= self._rows:
            table = pa.Table.from_batches(self._pending, schema=self._schema)
            self._write(table.slice(0, self._rows))
            rest = table.slice(self._rows)
            self._pending, self._n = rest.to_batches(), rest.num_rows

    def _write(self, table: pa.Table) -> None:
        if self._writing is not None:
            self._writing.result()
        self._writing = self._thread.submit(self._writer.write_table, table, table.num_rows)

    def close(self) -> None:
        """Write the last rows, wait for the writes, close the file."""
        try:
            if self._n:
                self._write(pa.Table.from_batches(self._pending, schema=self._schema))
            if self._writing is not None:
                self._writing.result()
        finally:
            self._thread.shutdown(wait=True)
            self._writer.close()


def sorted_windows(ids: np.ndarray, starts: np.ndarray) -> bool:
    """Rows sorted by (track_id, start_s), no window twice."""
    same = ids[1:] == ids[:-1]
    return bool((ids[1:] >= ids[:-1]).all() and (starts[1:][same] > starts[:-1][same]).all())


def write_partition(
    path: str | Path, rows: pa.RecordBatch, row_group_rows: int = ROW_GROUP_ROWS
) -> Path:
    """Write a whole partition file atomically (rows sorted by track_id and start_s)."""
    ids = rows.column(0).to_numpy()
    if not sorted_windows(ids, rows.column(1).to_numpy()):
        raise ValueError(f"{path}: rows must be sorted by (track_id, start_s), each window once")
    with atomic_path(path) as tmp:
        writer = PartitionWriter(tmp, rows.schema, row_group_rows)
        try:
            writer.add([rows])
        finally:
            writer.close()
    return Path(path)


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
