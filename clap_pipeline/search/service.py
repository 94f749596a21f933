"""The search service's state: one ``Searcher`` (engine.py) loaded once, swapped whole.

``SearchService`` holds one immutable ``Searcher`` (the model that embeds queries and the
``SearchIndex``: vector index and track metadata in memory). A request reads
``service.searcher`` once and uses only that object, so a swap (assigning a new
searcher, atomic in Python) never mixes two indexes or an index with the wrong model. No
DuckDB connection stays open: the index is read on a short read-only connection, feedback
is written by one writer thread (``feedback_writer.py``), a short write connection and
one transaction per batch of posts.

Fresh index without restart: a watcher thread polls the table's fingerprint (count,
id sum, build time, model version: ``search.index_info``, one cheap read-only query)
and the registry's champion alias. When the table changed it builds the next searcher
aside (the model of the version that built the table, the index, the metadata) and
swaps it in; requests keep being answered by the old one meanwhile. A champion alias
that moved while the table still holds the previous version's embeddings is reported
in ``health()`` but not served: a new model's text embeddings do not live in the old
index's space. The `retrain` job re-materializes `track_embeddings` with the new
champion right after, and that rebuild triggers the swap.

The HTTP layer is ``clap_pipeline.search.webapp``; this module imports no web framework.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from clap_pipeline import tracking
from clap_pipeline.config import FEEDBACK_QUEUE, Settings
from clap_pipeline.feedback import Recorded, new_feedback
from clap_pipeline.search.engine import (
    MAX_K,
    QueryEncoder,
    Result,
    Searcher,
    SearchIndex,
    attach_windows,
    build_search_index,
    encoder_cache_dir,
    load_query_encoder,
    make_searcher,
    query_model,
)
from clap_pipeline.search.feedback_writer import FeedbackWriter
from clap_pipeline.search.filters import DEFAULT_MODE, Filters
from clap_pipeline.search.index import TABLE, SearchError, index_info, read_collection
from clap_pipeline.search.options import ServeOptions
from clap_pipeline.search.text_encoder import DEFAULT_ENCODER
from clap_pipeline.search.window_ranker import WindowRanker, ranker_is_current
from clap_pipeline.window_embeddings import chosen_rule, store_files

log = logging.getLogger(__name__)


class AudioQueryError(ValueError):
    """An uploaded audio query that cannot be used; ``reason`` in a word (e.g. ``not_audio``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SearchService:
    """Loads a searcher, answers queries with it, and swaps in a fresh one when the table changes."""

    def __init__(
        self,
        settings: Settings,
        *,
        model_arg: str | None = None,
        poll_s: float = ServeOptions.poll_s,
        exact_max_rows: int | None = None,
        text_encoder: str = DEFAULT_ENCODER,
        encoder_threads: int = 1,
        decode_upload: Callable[[Path], np.ndarray] | None = None,
        feedback_queue: int = FEEDBACK_QUEUE,
    ) -> None:
        self.settings = settings
        # An uploaded audio file -> its windows (n, 240,000); the CLI hands in the audio
        # stage's decoder (audio/upload.py): search imports no other stage.
        self.decode_upload = decode_upload
        self.text_encoder = text_encoder
        self.encoder_threads = encoder_threads
        self.model_arg = model_arg
        self.poll_s = poll_s
        self.exact_max_rows = exact_max_rows
        self._searcher: Searcher | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._swap_lock = threading.Lock()
        # DuckDB refuses a read-write and a read-only connection to one file in one process
        # at the same time: the watcher's reads and the feedback writes take turns here.
        self._db_lock = threading.Lock()
        self.feedback_writer = FeedbackWriter(
            settings.duckdb_path, db_lock=self._db_lock, max_queued=feedback_queue
        )
        self.last_error: str | None = None
        self.champion_version: str | None = None
        self.swaps = 0

    # -- loading ---------------------------------------------------------------------------

    @property
    def searcher(self) -> Searcher:
        searcher = self._searcher
        if searcher is None:
            raise SearchError("the service has not loaded an index yet")
        return searcher

    def _build_searcher(self, previous: Searcher | None) -> Searcher:
        with self._db_lock:
            collection = read_collection(self.settings.duckdb_path)
        info = collection.info
        encoder: QueryEncoder
        if previous is not None and previous.index.info.model_version == info.model_version:
            encoder = previous.encoder
        else:
            model = query_model(self.settings, info, self.model_arg, follow_table=True)
            cache = encoder_cache_dir(self.settings)
            encoder = load_query_encoder(model, self.text_encoder, cache, self.encoder_threads)
        index = build_search_index(collection, self.exact_max_rows)
        # The same model's previous windows: only the store files that changed are read.
        same_model = previous is not None and previous.encoder is encoder
        index = self._with_windows(index, encoder, previous.index.windows if same_model else None)
        return make_searcher(encoder, index, self.settings.registered_model)

    def _with_windows(
        self, index: SearchIndex, encoder: QueryEncoder, previous: WindowRanker | None
    ) -> SearchIndex:
        return attach_windows(index, encoder, self.settings, previous, log=log.info)

    def _windows_changed(self, searcher: Searcher) -> bool:
        """The served model's window store or the evaluation's rule changed (cheap: stats)."""
        files = store_files(self.settings.window_embeddings_dir, searcher.encoder.fingerprint)
        rule = chosen_rule(self.settings.reports_dir)
        return not ranker_is_current(searcher.index.windows, files, rule)

    def load(self) -> Searcher:
        """Build the first searcher (raises with a clear message when nothing can be served)."""
        with self._swap_lock:
            self._searcher = self._build_searcher(None)
        self._refresh_champion()
        return self._searcher

    def refresh(self) -> bool:
        """Swap in a new searcher when the table changed; True when it did."""
        self._refresh_champion()
        with self._swap_lock:
            current = self.searcher
            with self._db_lock:
                info = index_info(self.settings.duckdb_path)
            if info.fingerprint != current.index.info.fingerprint:
                log.info(
                    "`%s` changed (%s rows, model %s): loading",
                    *(TABLE, info.count, info.model_version),
                )
                self._searcher = self._build_searcher(current)
            elif self._windows_changed(current):
                log.info("the window embeddings changed: indexing them")
                index = self._with_windows(current.index, current.encoder, current.index.windows)
                self._searcher = replace(current, index=index, loaded_at=dt.datetime.now(dt.UTC))
            else:
                return False
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
                    searcher = self.searcher
                    log.info(
                        "now serving %d tracks, model %s",
                        len(searcher.index),
                        searcher.model_version,
                    )
                self.last_error = None
            except Exception as exc:  # keep serving the old searcher; report why
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("index refresh failed, still serving the previous one: %s", exc)

    # -- queries ---------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        searcher = self.searcher
        version = searcher.model_version
        windows = searcher.index.windows
        stale = (
            self.champion_version is not None
            and version is not None
            and self.champion_version != version
        )
        return {
            "status": "ok",
            "model_version": version,
            "model": searcher.encoder.model.name,
            "text_encoder": searcher.encoder.kind,
            "tracks": len(searcher.index),
            "dim": searcher.index.info.dim,
            "index": searcher.index.vectors.describe(),
            "windows": None if windows is None else windows.index.describe(),
            "loaded_at": searcher.loaded_at.isoformat(),
            "swaps": self.swaps,
            "champion_version": self.champion_version,
            "note": (
                f"champion is version {self.champion_version}; `{TABLE}` still holds version "
                f"{version}'s embeddings: materialize `{TABLE}` to serve it"
                if stale
                else None
            ),
            "last_refresh_error": self.last_error,
            "feedback": self.feedback_writer.describe(),
        }

    def search(
        self, query: str, k: int, filters: Filters | None = None, mode: str = DEFAULT_MODE
    ) -> tuple[Searcher, list[Result]]:
        """Top ``k`` tracks among those that pass ``filters`` (fewer only if fewer pass)."""
        searcher = self.searcher
        return searcher, searcher.search(query, k, filters, MAX_K, mode)

    def similar(
        self, track_id: int, k: int, start_s: float | None = None
    ) -> tuple[Searcher, list[Result]]:
        """Audio->audio neighbours of an indexed track (the track itself left out); with
        ``start_s``, of its moment at that time (needs window embeddings)."""
        searcher = self.searcher
        return searcher, searcher.similar(track_id, k, MAX_K, start_s)

    def search_audio(
        self, path: Path, k: int, filters: Filters | None = None
    ) -> tuple[Searcher, list[Result]]:
        """Tracks that sound like an uploaded file (decoded by ``decode_upload``)."""
        if self.decode_upload is None:
            raise SearchError("this service was started without an audio decoder")
        searcher = self.searcher
        windows = self.decode_upload(path)
        return searcher, searcher.search_audio(windows, k, filters, MAX_K)

    def audio_path(self, track_id: int) -> Path:
        """The clip of an indexed track (never a client-supplied path)."""
        return self.searcher.index.audio_path(track_id)

    def submit_feedback(
        self, query: str, track_id: int, relevant: bool, client: str = ""
    ) -> concurrent.futures.Future:
        """Queue a client's verdict for the writer (one row per client, query and track:
        feedback.py); the future gives its ``Recorded`` once committed. Raises
        ``feedback_writer.FeedbackBusy`` when the writer's queue is full."""
        searcher = self.searcher
        searcher.index.catalog.position(track_id)  # only tracks that can be shown get verdicts
        row = new_feedback(query, track_id, relevant, searcher.model_version, client)
        return self.feedback_writer.submit(row)

    def feedback(self, query: str, track_id: int, relevant: bool, client: str = "") -> Recorded:
        """``submit_feedback`` and wait until the row is committed."""
        return self.submit_feedback(query, track_id, relevant, client).result()

    def close(self) -> None:
        """Stop the watcher; write every queued verdict, then refuse more."""
        self.stop_watcher()
        self.feedback_writer.close()
