"""The search service's state: model, index and track metadata loaded once, swapped whole.

``SearchService`` holds one immutable ``Snapshot`` (the CLAP model that embeds queries,
the ``VectorIndex`` over the ``track_embeddings`` matrix, and the tracks' metadata in
memory). A request reads ``service.snapshot`` once and uses only that object, so a
swap (assigning a new snapshot, atomic in Python) never mixes two indexes or an index
with the wrong model. No DuckDB connection stays open: the snapshot is read on a short
read-only connection, feedback is written on a short write connection.

Fresh index without restart: a watcher thread polls the table's fingerprint (count,
id sum, build time, model version: ``search.index_info``, one cheap read-only query)
and the registry's champion alias. When the table changed it builds the next snapshot
aside (the model of the version that built the table, the index, the metadata) and
swaps it in; requests keep being answered by the old one meanwhile. A champion alias
that moved while the table still holds the previous version's embeddings is reported
in ``health()`` but not served: a new model's text embeddings do not live in the old
index's space. The `retrain` job re-materializes `track_embeddings` with the new
champion right after, and that rebuild triggers the swap.

The HTTP layer is ``clap_pipeline.search.webapp``; this module imports no web framework.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clap_pipeline import tracking
from clap_pipeline.config import Settings
from clap_pipeline.feedback import Feedback, record_feedback, validate_query
from clap_pipeline.model.choice import ModelChoice, resolve_model
from clap_pipeline.search.filters import Catalog, Filters, build_catalog
from clap_pipeline.search.index import (
    CACHE_DIR_NAME,
    TABLE,
    IndexInfo,
    SearchError,
    catalog_rows,
    index_info,
    open_index,
    read_index_info,
)
from clap_pipeline.search.text_encoder import DEFAULT_ENCODER, Encoder, build_encoder
from clap_pipeline.search.vector_index import VectorIndex, build_vector_index

log = logging.getLogger(__name__)

MAX_K = 100
DEFAULT_POLL_S = 5.0


@dataclass(frozen=True)
class Result:
    rank: int
    track_id: int
    title: str | None
    artist: str | None
    genre: str | None
    score: float
    genres: list[str]
    year: int | None
    license: str | None
    duration_s: float | None  # the track's (FMA's track_duration), not the clip's


@dataclass(frozen=True)
class Snapshot:
    model: ModelChoice
    clap: object  # clap_pipeline.model.clap.LoadedClap
    index: VectorIndex
    catalog: Catalog
    info: IndexInfo
    loaded_at: dt.datetime
    encode_slots: threading.Semaphore
    encoder: Encoder

    @property
    def model_version(self) -> str | None:
        return self.model.version or self.info.model_version

    def embed(self, text: str) -> np.ndarray:
        # At most one forward per core (each on one thread, see ``serve``): more would
        # only fight over the cores.
        with self.encode_slots:
            return self.encoder([text])[0]

    def results(self, positions: np.ndarray, scores: np.ndarray) -> list[Result]:
        c = self.catalog
        return [
            Result(
                rank,
                int(c.track_ids[p]),
                c.titles[p],
                c.artists[p],
                c.genres[p],
                float(s),
                c.genre_lists[p],
                None if np.isnan(c.years[p]) else int(c.years[p]),
                c.licenses[p],
                None if np.isnan(c.durations[p]) else float(c.durations[p]),
            )
            for rank, (p, s) in enumerate(zip(positions.tolist(), scores.tolist(), strict=True), 1)
        ]


def read_catalog(duckdb_path: Path) -> tuple[np.ndarray, Catalog, IndexInfo]:
    """Matrix, metadata and fingerprint from one read-only connection (closed on return).

    A table written before the filter columns existed serves with unknown genres
    lists, years and durations (filters on them match nothing) until it is rebuilt.
    """
    with open_index(duckdb_path) as index:
        assert index.con is not None
        rows = catalog_rows(index.con)
        info = read_index_info(index.con, duckdb_path)
        matrix, track_ids = index.matrix, index.track_ids
    catalog = build_catalog(rows)
    if not np.array_equal(catalog.track_ids, track_ids):
        raise SearchError(f"`{TABLE}` changed while it was read: try again")
    return matrix, catalog, info


class SearchService:
    """Loads a snapshot, answers queries from it, and swaps in a fresh one when the table changes."""

    def __init__(
        self,
        settings: Settings,
        *,
        model_arg: str | None = None,
        poll_s: float = DEFAULT_POLL_S,
        exact_max_rows: int | None = None,
        text_encoder: str = DEFAULT_ENCODER,
        encoder_threads: int = 1,
    ) -> None:
        self.settings = settings
        self.text_encoder = text_encoder
        self.encoder_threads = encoder_threads
        self.model_arg = model_arg
        self.poll_s = poll_s
        self.exact_max_rows = exact_max_rows
        self._snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._swap_lock = threading.Lock()
        # DuckDB refuses a read-write and a read-only connection to one file in one process
        # at the same time: the watcher's reads and the feedback writes take turns here.
        self._db_lock = threading.Lock()
        self.last_error: str | None = None
        self.champion_version: str | None = None
        self.swaps = 0

    # -- loading ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise SearchError("the service has not loaded an index yet")
        return snap

    def _model_for(self, info: IndexInfo) -> ModelChoice:
        """``--model`` when given, else the registry version that built the table."""
        uri, name = self.settings.mlflow_tracking_uri, self.settings.registered_model
        if self.model_arg:
            return resolve_model(self.model_arg, uri, name)
        if info.model_version is not None:
            return resolve_model(f"models:/{name}/{info.model_version}", uri, name)
        return resolve_model(None, uri, name)

    def _build_snapshot(self, previous: Snapshot | None) -> Snapshot:
        from clap_pipeline.model.clap import load_clap

        with self._db_lock:
            matrix, catalog, info = read_catalog(self.settings.duckdb_path)
        if previous is not None and previous.info.model_version == info.model_version:
            model, clap, slots = previous.model, previous.clap, previous.encode_slots
            encoder = previous.encoder
        else:
            model = self._model_for(info)
            clap = load_clap(model.source)
            clap.model.eval()
            slots = threading.Semaphore(max(1, usable_cores() // self.encoder_threads))
            # Exported from this very model (cached by its weights' hash): no drift.
            cache = self.settings.duckdb_path.parent / CACHE_DIR_NAME / "onnx"
            encoder = build_encoder(clap, self.text_encoder, cache, self.encoder_threads)
        kwargs = {} if self.exact_max_rows is None else {"exact_max_rows": self.exact_max_rows}
        index = build_vector_index(matrix, **kwargs)
        now = dt.datetime.now(dt.UTC)
        snap = Snapshot(model, clap, index, catalog, info, now, slots, encoder)
        dim = snap.embed("music").shape[0]  # also warms the model up
        if dim != info.dim:
            raise SearchError(
                f"model {model.name} embeds text in {dim} dimensions but `{TABLE}` holds "
                f"{info.dim}-d embeddings (model version {info.model_version}): use the model "
                f"that built them, or materialize `{TABLE}` with this one"
            )
        return snap

    def load(self) -> Snapshot:
        """Build the first snapshot (raises with a clear message when nothing can be served)."""
        with self._swap_lock:
            self._snapshot = self._build_snapshot(None)
        self._refresh_champion()
        return self._snapshot

    def refresh(self) -> bool:
        """Swap in a new snapshot when the table changed; True when it did."""
        self._refresh_champion()
        with self._swap_lock:
            current = self.snapshot
            with self._db_lock:
                info = index_info(self.settings.duckdb_path)
            if info.fingerprint == current.info.fingerprint:
                return False
            log.info(
                "`%s` changed (%s rows, model %s): loading", TABLE, info.count, info.model_version
            )
            self._snapshot = self._build_snapshot(current)
            self.swaps += 1
            return True

    def _refresh_champion(self) -> None:
        if self.model_arg:
            return
        try:
            mv = tracking.alias_version(
                tracking.client(self.settings.mlflow_tracking_uri),
                self.settings.registered_model,
                tracking.CHAMPION,
            )
        except Exception as exc:  # the registry is only informative here
            log.warning("cannot read the champion alias: %s", exc)
            return
        self.champion_version = None if mv is None else str(mv.version)

    # -- watcher ---------------------------------------------------------------------------

    def start_watcher(self) -> None:
        if self._watcher is None and self.poll_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
            self._watcher.start()

    def stop_watcher(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
            self._watcher = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self.refresh():
                    snap = self.snapshot
                    log.info(
                        "now serving %d tracks, model %s",
                        len(snap.catalog.track_ids),
                        snap.model_version,
                    )
                self.last_error = None
            except Exception as exc:  # keep serving the old snapshot; report why
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("index refresh failed, still serving the previous one: %s", exc)

    # -- queries ---------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        snap = self.snapshot
        stale = (
            self.champion_version is not None
            and snap.model_version is not None
            and self.champion_version != snap.model_version
        )
        return {
            "status": "ok",
            "model_version": snap.model_version,
            "model": snap.model.name,
            "text_encoder": self.text_encoder,
            "tracks": len(snap.catalog.track_ids),
            "dim": snap.info.dim,
            "index": snap.index.describe(),
            "loaded_at": snap.loaded_at.isoformat(),
            "swaps": self.swaps,
            "champion_version": self.champion_version,
            "note": (
                f"champion is version {self.champion_version}; `{TABLE}` still holds version "
                f"{snap.model_version}'s embeddings: materialize `{TABLE}` to serve it"
                if stale
                else None
            ),
            "last_refresh_error": self.last_error,
        }

    def search(
        self, query: str, k: int, filters: Filters | None = None
    ) -> tuple[Snapshot, list[Result]]:
        """Top ``k`` tracks among those that pass ``filters`` (fewer only if fewer pass)."""
        text = validate_query(query)
        _check_k(k)
        snap = self.snapshot
        allowed = snap.catalog.allowed(filters or Filters())
        positions, scores = snap.index.search(snap.embed(text), k, allowed)
        return snap, snap.results(positions, scores)

    def similar(self, track_id: int, k: int) -> tuple[Snapshot, list[Result]]:
        """Audio->audio neighbours of an indexed track (the track itself left out)."""
        _check_k(k)
        snap = self.snapshot
        pos = snap.catalog.position(track_id)
        positions, scores = snap.index.search(snap.index.matrix[pos], k + 1)
        keep = positions != pos
        return snap, snap.results(positions[keep][:k], scores[keep][:k])

    def audio_path(self, track_id: int) -> Path:
        """The clip of an indexed track (never a client-supplied path)."""
        snap = self.snapshot
        path = Path(snap.catalog.audio_paths[snap.catalog.position(track_id)])
        if not path.is_file():
            raise FileNotFoundError(f"the clip of track {track_id} is missing: {path}")
        return path

    def feedback(self, query: str, track_id: int, relevant: bool) -> Feedback:
        snap = self.snapshot
        snap.catalog.position(track_id)  # only tracks that can be shown get verdicts
        with self._db_lock:
            return record_feedback(
                self.settings.duckdb_path,
                query=query,
                track_id=track_id,
                relevant=relevant,
                model_version=snap.model_version,
            )


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
