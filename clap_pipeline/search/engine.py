"""The one search path: `clap-pipeline search`/`playlist` and the service answer through it.

- ``SearchIndex``: what one build of `track_embeddings` holds in memory: the ``Catalog``
  (metadata and filters, ``search/filters.py``), the ``VectorIndex`` (top-k over the audio
  embeddings, ``search/vector_index.py``), the ``LexicalIndex`` (BM25 over the names,
  ``search/lexical.py``) and the table's ``IndexInfo``. It ranks catalog rows for a query
  in a ``mode`` (audio, text, or both fused by reciprocal rank fusion) and turns them
  into ``Result`` rows.
- ``QueryEncoder``: the model that embeds queries in that index's space (ONNX int8 for
  the service, the PyTorch model for one CLI query, ``search/text_encoder.py``).
- ``Searcher``: the two together, checked to match (model version, dimension); immutable,
  so the service swaps a whole one in (``search/service.py``).
- ``Result``: one ranked track; the table, JSON and M3U outputs (``search/results.py``)
  and the HTTP answers (``search/webapp.py``) all render it.

Extending: a result field goes on ``Result`` (with a default) and, when clients see it,
on ``webapp.SearchResult``; another ranking (lexical, window-level) ranks the same catalog
rows (positions, scores) and ``SearchIndex.rank`` combines it with the audio ranking.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from clap_pipeline.config import Settings
from clap_pipeline.feedback import validate_query
from clap_pipeline.model.choice import ModelChoice, resolve_model
from clap_pipeline.processes import usable_cpus
from clap_pipeline.reporting import Log, warn
from clap_pipeline.search.filters import DEFAULT_MODE, MODES, Catalog, Filters
from clap_pipeline.search.index import (
    TABLE,
    Collection,
    IndexInfo,
    SearchError,
    cache_dir,
    index_info,
    read_collection,
)
from clap_pipeline.search.lexical import LexicalIndex, load_or_build
from clap_pipeline.search.text_encoder import BatchingEncoder, Encoder, build_encoder
from clap_pipeline.search.vector_index import VectorIndex, build_vector_index
from clap_pipeline.search.window_ranker import (
    Moment,
    MomentNotFoundError,
    WindowRanker,
    build_window_ranker,
)
from clap_pipeline.window_embeddings import chosen_rule, store_files

MAX_K = 100  # results per HTTP request (a CLI query may ask for every track)
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al.; Qdrant's and Elastic's default)
FUSION_DEPTH = 100  # candidates each ranking hands the fusion (at least k)
# The names' ranking counts twice the audio's in the fusion: measured with
# benchmarks/bench_hybrid.py on two collections (docs/search.md), plain RRF (1.0) left
# most of an artist's tracks out of the top 10 behind audio-only hits.
TEXT_WEIGHT = 2.0


@dataclass(frozen=True)
class Result:
    rank: int
    track_id: int
    title: str | None
    artist: str | None
    genre: str | None  # FMA's top genre
    score: float  # the mode's: audio cosine, BM25 of the names, or the fused RRF score
    genres: list[str]  # the top genre and every genre of the track
    year: int | None  # album release year, else the track's upload year
    license: str | None
    duration_s: float | None  # the track's (FMA's track_duration), not the clip's
    audio_path: str  # the clip on the server's disk (never sent to HTTP clients)
    file_duration_s: float | None  # the clip file's length (what a playlist plays)
    moment: Moment | None = None  # where the query is heard best (an index with windows)


def check_k(k: int, max_k: int | None = None) -> None:
    if k < 1 or (max_k is not None and k > max_k):
        bounds = ">= 1" if max_k is None else f"between 1 and {max_k}"
        raise ValueError(f"k must be {bounds}, got {k}")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


Ranking = tuple[np.ndarray, np.ndarray]  # row positions, scores; best first


def fuse(rankings: list[Ranking], k: int, weights: list[float] | None = None) -> Ranking:
    """Weighted reciprocal rank fusion: a row scores sum(weight / (RRF_K + rank)) over the
    rankings (weights 1 by default: plain RRF).

    Ties keep the order of first appearance (the first ranking's order first).
    """
    fused: dict[int, float] = {}
    for (positions, _), weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, pos in enumerate(positions.tolist(), start=1):
            fused[pos] = fused.get(pos, 0.0) + weight / (RRF_K + rank)
    order = sorted(fused, key=lambda p: -fused[p])[:k]  # stable: ties keep first appearance
    return np.array(order, dtype=np.int64), np.array([fused[p] for p in order])


@dataclass(frozen=True)
class SearchIndex:
    """One build of `track_embeddings` in memory: catalog, vector and lexical index, info."""

    catalog: Catalog
    vectors: VectorIndex
    lexical: LexicalIndex
    info: IndexInfo
    text_weight: float = TEXT_WEIGHT  # the names' weight in hybrid mode
    windows: WindowRanker | None = None  # every window of the tracks (the audio ranking)

    def __len__(self) -> int:
        return len(self.catalog.track_ids)

    def rank(
        self,
        text: str,
        embedding: np.ndarray | None,
        k: int,
        filters: Filters | None = None,
        mode: str = DEFAULT_MODE,
    ) -> Ranking:
        """Row positions and scores of the best ``k`` rows that pass ``filters``.

        ``audio``: the query embedding against the audio embeddings; ``text``: BM25 of the
        query's words in the tracks' names (only rows that match a word); ``hybrid``: both
        rankings' top ``max(k, FUSION_DEPTH)`` fused by reciprocal rank fusion, the names
        weighted ``text_weight``.
        """
        check_mode(mode)
        allowed = self.catalog.allowed(filters or Filters())
        if mode == "text":
            return self.lexical.rank(text, k, allowed)
        if embedding is None:
            raise ValueError(f"mode {mode} needs the query's embedding")
        if mode == "audio":
            return self._audio(embedding, k, allowed)
        depth = max(k, FUSION_DEPTH)
        audio = self._audio(embedding, depth, allowed)
        names = self.lexical.rank(text, depth, allowed)
        return fuse([audio, names], k, [1.0, self.text_weight])

    def _audio(self, embedding: np.ndarray, k: int, allowed: np.ndarray) -> Ranking:
        """The audio ranking: by the tracks' windows when the index has them."""
        if self.windows is not None:
            return self.windows.rank(embedding, k, allowed)
        return self.vectors.search(embedding, k, allowed)

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
                _number(c.durations[p]),
                c.audio_paths[p],
                _number(c.file_durations[p]),
            )
            for rank, (p, s) in enumerate(zip(positions.tolist(), scores.tolist(), strict=True), 1)
        ]

    def search(
        self,
        text: str,
        embedding: np.ndarray | None,
        k: int,
        filters: Filters | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[Result]:
        """Top ``k`` tracks for a query among those that pass ``filters``."""
        results = self.results(*self.rank(text, embedding, k, filters, mode))
        return self.with_moments(results, embedding)

    def with_moments(self, results: list[Result], query: np.ndarray | None) -> list[Result]:
        """Each result with its best window for ``query`` (unchanged without windows)."""
        if self.windows is None or query is None:
            return results
        rows = [self.catalog.position(r.track_id) for r in results]
        return [
            replace(r, moment=self.windows.moment(row, query))
            for r, row in zip(results, rows, strict=True)
        ]

    def search_windows(
        self, embeddings: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[Result]:
        """Tracks closest to any of several audio embeddings (an uploaded query's windows):
        a track scores its best cosine to one of them."""
        allowed = self.catalog.allowed(filters or Filters())
        if self.windows is not None:
            results = self.results(*self.windows.rank_many(embeddings, k, allowed))
            return [self._best_moment(r, embeddings) for r in results]
        depth = max(k, FUSION_DEPTH)
        best: dict[int, float] = {}
        for embedding in embeddings:
            positions, scores = self.vectors.search(embedding, depth, allowed)
            for pos, score in zip(positions.tolist(), scores.tolist(), strict=True):
                best[pos] = max(score, best.get(pos, -np.inf))
        order = sorted(best, key=lambda p: (-best[p], p))[:k]
        return self.results(np.array(order, dtype=np.int64), np.array([best[p] for p in order]))

    def _best_moment(self, result: Result, queries: np.ndarray) -> Result:
        """The result with its best window for the best of several queries."""
        assert self.windows is not None
        row = self.catalog.position(result.track_id)
        moments = [m for q in queries if (m := self.windows.moment(row, q)) is not None]
        return replace(result, moment=max(moments, key=lambda m: m.score, default=None))

    def similar(self, track_id: int, k: int, start_s: float | None = None) -> list[Result]:
        """Audio->audio neighbours of an indexed track (the track itself left out); by its
        windows when the index has them, ``start_s``: like the moment at that time."""
        pos = self.catalog.position(track_id)
        if self.windows is not None and self.windows.from_catalog[pos] >= 0:
            # Each result's moment: its window closest to (one of) the track's query windows.
            queries = self.windows.similar_queries(pos, start_s)
            results = self.results(*self.windows.similar(pos, k, start_s))
            return [self._best_moment(r, queries) for r in results]
        if start_s is not None:
            raise MomentNotFoundError(f"track {track_id} has no window embeddings to start from")
        positions, scores = self.vectors.search(self.vectors.matrix[pos], k + 1)
        keep = positions != pos
        return self.results(positions[keep][:k], scores[keep][:k])

    def audio_path(self, track_id: int) -> Path:
        """The clip of an indexed track (never a client-supplied path)."""
        path = Path(self.catalog.audio_paths[self.catalog.position(track_id)])
        if not path.is_file():
            raise FileNotFoundError(f"the clip of track {track_id} is missing: {path}")
        return path


def build_search_index(collection: Collection, exact_max_rows: int | None = None) -> SearchIndex:
    kwargs = {} if exact_max_rows is None else {"exact_max_rows": exact_max_rows}
    vectors = build_vector_index(collection.matrix, **kwargs)
    c = collection
    lexical = load_or_build(c.catalog, c.cache_dir, c.info.fingerprint)
    return SearchIndex(c.catalog, vectors, lexical, c.info)


def attach_windows(
    index: SearchIndex,
    encoder: QueryEncoder,
    settings: Settings,
    previous: WindowRanker | None = None,
    *,
    exact: bool = False,
    log: Log | None = None,
) -> SearchIndex:
    """``index`` ranking audio by every window of the served model's window embeddings
    (``window_embeddings.model_store`` of its fingerprint), by the rule the evaluation chose
    (``chosen_rule``: first, mean or max). Unchanged, without moments, when the store has
    no file of that model or lacks some of the index's tracks.

    ``previous``: the ranker of the same model, to read only the store files that changed
    (new tracks); ``exact``: scan every representative (a one-shot CLI query).
    """
    files = store_files(settings.window_embeddings_dir, encoder.fingerprint)
    if not files:
        return replace(index, windows=None)
    rule = chosen_rule(settings.reports_dir)
    options = {"coarse": "Flat"} if exact else {}
    ranker = build_window_ranker(
        files, index.catalog.track_ids, rule, encoder.embed_texts, index.catalog.genres,
        previous, log, **options,
    )  # fmt: skip
    lacking = int((ranker.from_catalog < 0).sum())
    if lacking:
        if log is not None:
            warn(log, f"{lacking} of {len(index)} tracks of `{TABLE}` have no window "
                 f"embeddings of model {encoder.fingerprint}: no moments until "
                 "`window_embeddings` is materialized")  # fmt: skip
        return replace(index, windows=None)
    return replace(index, windows=ranker)


@dataclass(frozen=True)
class QueryEncoder:
    """The model that embeds queries, and how many may run at once."""

    model: ModelChoice
    clap: object  # clap_pipeline.model.clap.LoadedClap
    encode: Encoder
    kind: str  # text_encoder.ENCODER_KINDS
    slots: threading.Semaphore
    features: object  # model.features.LogMelFeatures on the CPU (audio queries)

    def embed(self, text: str) -> np.ndarray:
        if isinstance(self.encode, BatchingEncoder):  # one worker per core batches them
            return self.encode([text])[0]
        # At most one forward per core (each on its own threads, see ``serve``): more
        # would only fight over the cores.
        with self.slots:
            return self.encode([text])[0]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.embed(t) for t in texts])

    @cached_property
    def fingerprint(self) -> str:
        """The weights' key in the window-embeddings store (``window_embeddings.py``)."""
        from clap_pipeline.model.clap import model_fingerprint

        return model_fingerprint(self.clap.model)

    def embed_audio(self, windows: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (n, d) of (n, 240,000) windows, by the audio tower."""
        import torch

        from clap_pipeline.model.clap import clip_embeddings

        with self.slots, torch.inference_mode():
            return clip_embeddings(self.clap.model, self.features, windows, torch.device("cpu"))


def load_query_encoder(
    model: ModelChoice, kind: str, cache_dir: Path, threads: int = 1
) -> QueryEncoder:
    """Load ``model`` and its text encoder of ``kind`` (ONNX graphs cached in ``cache_dir``)."""
    from clap_pipeline.model.clap import load_clap
    from clap_pipeline.model.features import features_for_model

    clap = load_clap(model.source)
    clap.model.eval()
    # ONNX graphs are exported from this very model (cached by its weights' hash): no drift.
    encode = build_encoder(clap, kind, cache_dir, threads)
    workers = max(1, usable_cpus() // threads)
    if kind != "torch":  # queries that arrive together are encoded as one batch
        encode = BatchingEncoder(encode, workers)
    slots = threading.Semaphore(workers)
    return QueryEncoder(model, clap, encode, kind, slots, features_for_model(clap, "cpu"))


def check_model_matches(model: ModelChoice, info: IndexInfo, registered_model: str) -> None:
    """A registered model must be the version that built the table (else another space)."""
    if model.version is not None and info.model_version not in (None, model.version):
        raise SearchError(
            f"`{TABLE}` was computed with {registered_model} version {info.model_version}, "
            f"the query model is {model.name}: materialize `{TABLE}` again (it uses the "
            f"champion) or pass --model models:/{registered_model}/{info.model_version}"
        )


def query_model(
    settings: Settings, info: IndexInfo, model_arg: str | None, *, follow_table: bool
) -> ModelChoice:
    """``model_arg`` when given; else the version that built the table (``follow_table``,
    the service) or the champion (the CLI). Checked against the table before it is loaded."""
    uri, name = settings.mlflow_tracking_uri, settings.registered_model
    if not model_arg and follow_table and info.model_version is not None:
        model_arg = f"models:/{name}/{info.model_version}"
    model = resolve_model(model_arg, uri, name)
    check_model_matches(model, info, name)
    return model


@dataclass(frozen=True)
class Searcher:
    """A query encoder and the index whose space it embeds in: answers text queries."""

    encoder: QueryEncoder
    index: SearchIndex
    loaded_at: dt.datetime

    @property
    def model_version(self) -> str | None:
        return self.encoder.model.version or self.index.info.model_version

    def search(
        self,
        query: str,
        k: int,
        filters: Filters | None = None,
        max_k: int | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[Result]:
        """Top ``k`` tracks for a text query among those that pass ``filters``."""
        text = validate_query(query)
        check_k(k, max_k)
        check_mode(mode)
        embedding = None if mode == "text" else self.encoder.embed(text)
        return self.index.search(text, embedding, k, filters, mode)

    def similar(
        self, track_id: int, k: int, max_k: int | None = None, start_s: float | None = None
    ) -> list[Result]:
        check_k(k, max_k)
        return self.index.similar(track_id, k, start_s)

    def search_audio(
        self,
        windows: np.ndarray,
        k: int,
        filters: Filters | None = None,
        max_k: int | None = None,
    ) -> list[Result]:
        """Tracks that sound like an audio query's windows (n, 240,000), best first."""
        check_k(k, max_k)
        return self.index.search_windows(self.encoder.embed_audio(windows), k, filters)


def make_searcher(encoder: QueryEncoder, index: SearchIndex, registered_model: str) -> Searcher:
    """Pair them, refusing a model of another version or dimension than the index."""
    info = index.info
    check_model_matches(encoder.model, info, registered_model)
    dim = encoder.embed("music").shape[0]  # also warms the model up
    if dim != info.dim:
        raise SearchError(
            f"model {encoder.model.name} embeds text in {dim} dimensions but `{TABLE}` holds "
            f"{info.dim}-d embeddings (model version {info.model_version}): use the model "
            f"that built them, or materialize `{TABLE}` with this one"
        )
    return Searcher(encoder, index, dt.datetime.now(dt.UTC))


def encoder_cache_dir(settings: Settings) -> Path:
    return cache_dir(settings.duckdb_path) / "onnx"


def search(
    settings: Settings,
    query: str,
    k: int,
    model_arg: str | None = None,
    filters: Filters | None = None,
    mode: str = DEFAULT_MODE,
) -> list[Result]:
    """One query from a command line: the champion (or ``model_arg``) in PyTorch, top ``k``.

    Cheap checks first (query, k, the table and its model version), then the model load.
    The index scans exactly: building an IVF index only pays off over many queries.
    """
    validate_query(query)
    check_k(k)
    check_mode(mode)
    info = index_info(settings.duckdb_path)
    model = query_model(settings, info, model_arg, follow_table=False)
    encoder = load_query_encoder(model, "torch", encoder_cache_dir(settings))
    collection = read_collection(settings.duckdb_path)
    index = build_search_index(collection, exact_max_rows=collection.info.count)
    index = attach_windows(index, encoder, settings, exact=True)
    searcher = make_searcher(encoder, index, settings.registered_model)
    return searcher.search(query, k, filters, mode=mode)
