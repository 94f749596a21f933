"""The window embeddings: one row per window of a track, and how a track's windows make its score.

The contract of ``window_embeddings/<model key>/NNN.parquet`` (one file per audio folder, as
``waveforms/``), written once per model version and read by evaluation, the search index,
``model_comparison`` and the feedback evaluation instead of embedding the audio again:

- columns: ``track_id`` (int64), ``start_s`` (float64: where the window starts in the file,
  ``windows.WindowRule.start_s``), ``end_s`` (float64: where its real audio ends; a padded
  partial last window ends early), ``embedding`` (float32[d], L2-normalised audio
  embedding), ``source_size`` / ``source_mtime`` (the decoded file's, as in the waveform
  rows: a track whose file changed is embedded again); rows sorted by (track_id, start_s);
- metadata: ``clap.model.version`` (registered version, or "" for a folder or hub id),
  ``clap.model.fingerprint`` (the weights' sha256, :func:`model.clap.model_fingerprint`),
  ``clap.model.source`` and the window rule (``clap.window.*``).

A track's score for a query aggregates its windows (:data:`AGGREGATIONS`):

- ``first``: the first window only (what every stage did before whole tracks);
- ``mean``: the query against the L2-normalised mean of the window embeddings (one vector
  per track: what TTMR++ and MuQ-MuLan search);
- ``max``: the best window's score (a track matches when one of its moments does).

The store: :func:`model_store` (one folder per model fingerprint), :func:`write_store_file`
(atomic), :func:`read_store`; ``model/embed_windows.py`` fills it. Imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clap_pipeline.knobs import DEVICE, EMBED_BATCH_SIZE, check
from clap_pipeline.reporting import Log, warn
from clap_pipeline.storage import atomic_path, write_text_atomic
from clap_pipeline.windows import WindowRule

EMBEDDINGS_FORMAT_VERSION = "1"
AGGREGATIONS = ("first", "mean", "max")


@dataclass(frozen=True)
class EmbedWindowsOptions:
    """The `window_embeddings` asset's and `clap-pipeline embed-windows`' knobs."""

    batch_size: int = EMBED_BATCH_SIZE.field()
    device: str = DEVICE.field()

    def __post_init__(self) -> None:
        check(self, "window_embeddings config")


def window_embeddings_schema(
    dim: int, *, model_version: str, model_fingerprint: str, model_source: str, rule: WindowRule
) -> pa.Schema:
    """The Parquet schema of one model's window embeddings (module docstring)."""
    return pa.schema(
        [
            pa.field("track_id", pa.int64(), nullable=False),
            pa.field("start_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("source_size", pa.int64(), nullable=False),
            pa.field("source_mtime", pa.float64(), nullable=False),
        ],
        metadata={
            "clap.embeddings.version": EMBEDDINGS_FORMAT_VERSION,
            "clap.model.version": model_version,
            "clap.model.fingerprint": model_fingerprint,
            "clap.model.source": model_source,
            **rule.metadata(),
        },
    )


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class WindowEmbeddings:
    """Window embeddings of some tracks, rows sorted by (track_id, start_s)."""

    track_ids: np.ndarray  # int64 (N,)
    start_s: np.ndarray  # float64 (N,)
    end_s: np.ndarray  # float64 (N,)
    embeddings: np.ndarray  # float32 (N, d), rows L2-normalised

    def __post_init__(self) -> None:
        n = len(self.track_ids)
        if not (len(self.start_s) == len(self.end_s) == len(self.embeddings) == n):
            raise ValueError("track_ids, start_s, end_s and embeddings differ in length")
        order = np.lexsort((self.start_s, self.track_ids))
        if n and (order != np.arange(n)).any():
            raise ValueError("window embeddings must be sorted by (track_id, start_s)")
        ids = self.track_ids
        self._firsts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if n else np.zeros(0, int)

    @classmethod
    def from_table(cls, table: pa.Table) -> WindowEmbeddings:
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size
        flat = column.values.to_numpy(zero_copy_only=False)
        return cls(
            track_ids=table.column("track_id").to_numpy().astype(np.int64),
            start_s=table.column("start_s").to_numpy().astype(np.float64),
            end_s=table.column("end_s").to_numpy().astype(np.float64),
            embeddings=np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim),
        )

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def tracks(self) -> np.ndarray:
        """The distinct track ids, in order."""
        return self.track_ids[self._firsts]

    @property
    def windows_per_track(self) -> np.ndarray:
        return np.diff(np.r_[self._firsts, len(self)])

    def subset(self, track_ids: Sequence[int]) -> WindowEmbeddings:
        """The windows of ``track_ids`` (KeyError naming the first track without windows)."""
        wanted = np.asarray(sorted(int(t) for t in track_ids), dtype=np.int64)
        missing = np.setdiff1d(wanted, self.tracks)
        if missing.size:
            raise KeyError(f"no window embeddings for track {int(missing[0])}")
        rows = np.flatnonzero(np.isin(self.track_ids, wanted))
        return WindowEmbeddings(
            self.track_ids[rows], self.start_s[rows], self.end_s[rows], self.embeddings[rows]
        )

    def track_vectors(self, aggregation: str) -> np.ndarray:
        """One L2-normalised vector per track (``first`` or ``mean``), in :attr:`tracks` order."""
        if aggregation == "first":
            return self.embeddings[self._firsts]
        if aggregation == "mean":
            sums = np.add.reduceat(self.embeddings, self._firsts, axis=0) if len(self) else None
            return l2_normalise(sums) if sums is not None else self.embeddings[:0]
        raise ValueError(f"{aggregation!r} has no track vector: one of 'first', 'mean'")

    def track_scores(self, queries: np.ndarray, aggregation: str) -> np.ndarray:
        """(Q, T) scores of each query against each track, windows aggregated by ``aggregation``."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        queries = np.asarray(queries, dtype=np.float32)
        if aggregation == "max":
            if not len(self):
                return np.zeros((len(queries), 0), dtype=np.float32)
            return np.maximum.reduceat(queries @ self.embeddings.T, self._firsts, axis=1)
        return queries @ self.track_vectors(aggregation).T

    def best_windows(self, queries: np.ndarray) -> np.ndarray:
        """(Q, T) row index of each track's best-scoring window for each query."""
        scores = np.asarray(queries, dtype=np.float32) @ self.embeddings.T
        out = np.empty((len(queries), len(self._firsts)), dtype=np.int64)
        bounds = np.r_[self._firsts, len(self)]
        for t in range(len(self._firsts)):
            lo, hi = bounds[t], bounds[t + 1]
            out[:, t] = lo + scores[:, lo:hi].argmax(axis=1)
        return out


# --------------------------------------------------------------------------- the store


def model_store(store_dir: str | Path, fingerprint: str) -> Path:
    """``<store_dir>/<fingerprint>/``: one model's window embeddings, a file per audio folder."""
    return Path(store_dir) / fingerprint


def store_files(store_dir: str | Path, fingerprint: str) -> list[Path]:
    """One model's store files, in folder order (none: the model has no window embeddings)."""
    return sorted(model_store(store_dir, fingerprint).glob("[0-9]*.parquet"))


def store_file(store_dir: str | Path, fingerprint: str, folder: str) -> Path:
    return model_store(store_dir, fingerprint) / f"{folder}.parquet"


def window_rows(
    schema: pa.Schema,
    track_ids: np.ndarray,
    start_s: np.ndarray,
    end_s: np.ndarray,
    embeddings: np.ndarray,
    source_sizes: np.ndarray,
    source_mtimes: np.ndarray,
) -> pa.Table:
    """Rows of a store file (checked: L2-normalised embeddings of the schema's width)."""
    dim = schema.field("embedding").type.list_size
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, dim)
    if len(embeddings) and not np.all(np.abs(np.linalg.norm(embeddings, axis=1) - 1) < 1e-3):
        raise ValueError("window embeddings must be L2-normalised")
    return pa.table(
        [
            pa.array(np.asarray(track_ids, np.int64)),
            pa.array(np.asarray(start_s, np.float64)),
            pa.array(np.asarray(end_s, np.float64)),
            pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim),
            pa.array(np.asarray(source_sizes, np.int64)),
            pa.array(np.asarray(source_mtimes, np.float64)),
        ],
        schema=schema,
    )


def write_store_file(path: Path, rows: pa.Table) -> Path:
    """One folder's rows, sorted by (track_id, start_s), written aside and renamed into place."""
    rows = rows.sort_by([("track_id", "ascending"), ("start_s", "ascending")])
    with atomic_path(path) as tmp:
        pq.write_table(rows, tmp, compression="zstd", row_group_size=16_384)
    return path


def read_store(
    store_dir: str | Path, fingerprint: str, track_ids: Iterable[int] | None = None
) -> WindowEmbeddings:
    """One model's window embeddings (of ``track_ids``, default all), every folder's file."""
    files = store_files(store_dir, fingerprint)
    if not files:
        raise FileNotFoundError(
            f"no window embeddings of model {fingerprint} under {store_dir}: materialize "
            "`window_embeddings`"
        )
    columns = ["track_id", "start_s", "end_s", "embedding"]
    wanted = None if track_ids is None else pa.array(sorted({int(t) for t in track_ids}))
    tables = []
    for path in files:
        table = pq.read_table(path, columns=columns)
        if wanted is not None:
            table = table.filter(pc.is_in(table.column("track_id"), value_set=wanted))
        tables.append(table)
    return WindowEmbeddings.from_table(pa.concat_tables(tables))


# --------------------------------------------------------------------------- what search uses

SEARCH_RULE_FILE = "search_rule.json"  # in the reports dir, written by the evaluation
VECTOR_RULES = ("first", "mean")  # one vector per track: what the track_embeddings table holds
DEFAULT_RULE = "mean"


def write_search_rule(reports_dir: str | Path, rule: str, chosen_by: str) -> Path:
    """The aggregation the evaluation chose for search (``evaluation/whole_track.py``)."""
    if rule not in AGGREGATIONS:
        raise ValueError(f"rule must be one of {AGGREGATIONS}, got {rule!r}")
    payload = json.dumps({"rule": rule, "chosen_by": chosen_by}, indent=1)
    return write_text_atomic(Path(reports_dir) / SEARCH_RULE_FILE, payload)


def _read_choice(reports_dir: str | Path) -> tuple[str, str]:
    """(rule, why) of the last evaluation's choice; (DEFAULT_RULE, "") when there is none."""
    try:
        chosen = json.loads((Path(reports_dir) / SEARCH_RULE_FILE).read_text())
        rule, why = str(chosen["rule"]), str(chosen.get("chosen_by", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_RULE, ""  # no evaluation yet (or a damaged file: the default)
    return (rule, why) if rule in AGGREGATIONS else (DEFAULT_RULE, "")


def chosen_rule(reports_dir: str | Path) -> str:
    """The aggregation the last evaluation chose (first, mean or max; else the default): what
    an index of every window (``search/window_index.py``) ranks by."""
    return _read_choice(reports_dir)[0]


def search_rule(reports_dir: str | Path, log: Log | None = None) -> str:
    """How a track's windows make the one vector per track search ranks: the rule the last
    evaluation chose, else the mean of the windows. The best-window rule (``max``) needs an
    index of every window: the mean stands in for it, and says so."""
    rule, why = _read_choice(reports_dir)
    if rule not in VECTOR_RULES:
        if log is not None:
            warn(log, f"the evaluation chose {rule!r} ({why}); one vector per track holds "
                 f"{DEFAULT_RULE!r}")  # fmt: skip
        return DEFAULT_RULE
    return rule
