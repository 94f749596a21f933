"""Where a stored window's 16-bit PCM bytes lie in its waveforms file, to read only them.

A waveforms row group's ``pcm`` column chunk is uncompressed Parquet data pages with PLAIN
encoding (``dataset.PartitionWriter`` pins one page per chunk; files written before hold
pages of a few windows): after each page's header, each row is a 4-byte little-endian
length and the window's bytes. The rows' sample counts (``n_samples_decoded``) and the
pages' headers then give every window's file offset, so a training epoch that trains on
one window per track reads that window's 480 KB from disk instead of its whole row group
(64 windows).

:func:`locate` checks that layout against the file (each page header parsed, the sizes
adding up to the chunk's) and returns ``None`` when it does not hold (another writer, a
codec, a row that breaks the contract): the caller then reads the row group with pyarrow.
:func:`read_pcm` reads the wanted rows, one ``pread`` per run of adjacent rows, and checks
each row's length prefix. Imports nothing of the project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

_LENGTH = 4  # PLAIN BYTE_ARRAY: a 4-byte little-endian length before each value
_HEADER_READ = 256  # bytes read for a page header (ours take about 25)
_DATA_PAGE = 0  # parquet.thrift PageType.DATA_PAGE
_PLAIN = 0  # parquet.thrift Encoding.PLAIN


@dataclass(frozen=True)
class PcmChunk:
    """A row group's ``pcm`` column chunk, from the footer."""

    start: int  # the first page's offset in the file
    size: int  # total_compressed_size (page headers included)
    plain: bool  # uncompressed, no dictionary page
    rows: int

    @classmethod
    def of(cls, metadata: pq.FileMetaData, row_group: int, column: int) -> PcmChunk:
        group = metadata.row_group(row_group)
        chunk = group.column(column)
        plain = chunk.compression == "UNCOMPRESSED" and not chunk.has_dictionary_page
        size = int(chunk.total_compressed_size)
        return cls(int(chunk.data_page_offset), size, plain, int(group.num_rows))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _thrift_struct(buf: bytes, i: int) -> tuple[dict[int, object], int]:
    """A Thrift compact-protocol struct at ``buf[i:]``: ({field id: int or struct}, end).
    Only the types a page header holds; ValueError on others, IndexError when cut short."""
    fields: dict[int, object] = {}
    field_id = 0
    while True:
        byte = buf[i]
        i += 1
        if byte == 0:  # stop
            return fields, i
        delta, kind = byte >> 4, byte & 0x0F
        if delta:
            field_id += delta
        else:
            raw, i = _varint(buf, i)
            field_id = (raw >> 1) ^ -(raw & 1)
        if kind in (1, 2):  # booleans: the value is the type
            fields[field_id] = int(kind == 1)
        elif kind == 3:  # byte
            fields[field_id], i = buf[i], i + 1
        elif kind in (4, 5, 6):  # i16, i32, i64: zigzag varints
            raw, i = _varint(buf, i)
            fields[field_id] = (raw >> 1) ^ -(raw & 1)
        elif kind == 8:  # binary
            length, i = _varint(buf, i)
            fields[field_id], i = buf[i : i + length], i + length
        elif kind == 12:
            fields[field_id], i = _thrift_struct(buf, i)
        else:
            raise ValueError(f"unexpected Thrift type {kind} in a page header")


def _page_header(raw: bytes) -> tuple[int, int, int] | None:
    """(header bytes, value bytes, rows) of the uncompressed PLAIN data page whose header
    starts ``raw``; ``None`` for another kind of page or a header cut short."""
    try:
        fields, end = _thrift_struct(raw, 0)
    except (IndexError, ValueError):
        return None
    page = fields.get(5)  # data_page_header: num_values, encoding, levels' encodings
    if (
        fields.get(1) != _DATA_PAGE
        or not isinstance(page, dict)
        or page.get(2) != _PLAIN
        or fields.get(2) != fields.get(3)  # uncompressed
    ):
        return None
    return end, int(fields[3]), int(page[1])  # type: ignore[arg-type, call-overload]


def locate(path: Path, chunk: PcmChunk, n_samples: np.ndarray) -> np.ndarray | None:
    """File offsets of each row's PCM bytes in ``chunk`` (rows of ``n_samples`` samples),
    or ``None`` when its pages are not PLAIN data pages of exactly those values. Reads each
    page's header (one page per row group since the writer pins it; 16 in older files)."""
    lengths = 2 * np.asarray(n_samples, dtype=np.int64)
    if not chunk.plain or len(lengths) != chunk.rows or (lengths <= 0).any():
        return None
    offsets = np.empty(len(lengths), dtype=np.int64)
    at, row, end = chunk.start, 0, chunk.start + chunk.size
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # headers only, no read-ahead
        while at < end and row < len(lengths):
            header = _page_header(os.pread(fd, _HEADER_READ, at))
            if header is None:
                return None
            header_bytes, value_bytes, rows = header
            values = lengths[row : row + rows] + _LENGTH
            if rows <= 0 or row + rows > len(lengths) or value_bytes != int(values.sum()):
                return None
            offsets[row : row + rows] = at + header_bytes + _LENGTH + np.cumsum(values) - values
            at, row = at + header_bytes + value_bytes, row + rows
    finally:
        os.close(fd)
    return offsets if (at, row) == (end, len(lengths)) else None


def read_pcm(
    path: Path, offsets: np.ndarray, n_samples: np.ndarray, rows: np.ndarray
) -> list[np.ndarray] | None:
    """The 16-bit samples of ``rows`` (ascending) of a located chunk, each an int16 array:
    one read per run of adjacent rows. ``None`` when a length prefix does not match (the
    file changed since it was located)."""
    out: list[np.ndarray] = []
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        if all(len(run) == 1 for run in runs):  # lone windows: no read-ahead past them
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for run in runs:
            lo = int(offsets[run[0]]) - _LENGTH
            hi = int(offsets[run[-1]]) + 2 * int(n_samples[run[-1]])
            buf = np.empty(hi - lo, dtype=np.uint8)
            if os.preadv(fd, [buf], lo) != hi - lo:
                return None
            for row in run.tolist():
                at = int(offsets[row]) - lo
                n_bytes = 2 * int(n_samples[row])
                if int(buf[at - _LENGTH : at].view("<u4")[0]) != n_bytes:
                    return None
                out.append(buf[at : at + n_bytes].view("<i2"))
    finally:
        os.close(fd)
    return out
