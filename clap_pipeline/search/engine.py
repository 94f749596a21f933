"""The one search path: `clap-pipeline search`/`playlist` and the service answer through it.

- ``SearchIndex``: what one build of `track_embeddings` holds in memory: the ``Catalog``
  (metadata and filters, ``search/filters.py``), the ``VectorIndex`` (top-k over the audio
  embeddings, ``search/vector_index.py``) and the table's ``IndexInfo``. It ranks catalog
  rows for a query embedding and turns them into ``Result`` rows.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clap_pipeline.config import Settings
from clap_pipeline.feedback import validate_query
from clap_pipeline.model.choice import ModelChoice, resolve_model
from clap_pipeline.processes import usable_cpus
from clap_pipeline.search.filters import Catalog, Filters
from clap_pipeline.search.index import (
    CACHE_DIR_NAME,
    TABLE,
    Collection,
    IndexInfo,
    SearchError,
    index_info,
    read_collection,
)
from clap_pipeline.search.text_encoder import Encoder, build_encoder
from clap_pipeline.search.vector_index import VectorIndex, build_vector_index

MAX_K = 100  # results per HTTP request (a CLI query may ask for every track)


@dataclass(frozen=True)
class Result:
    rank: int
    track_id: int
    title: str | None
    artist: str | None
    genre: str | None  # FMA's top genre
    score: float  # cosine similarity of the query and the track's audio
    genres: list[str]  # the top genre and every genre of the track
    year: int | None  # album release year, else the track's upload year
    license: str | None
    duration_s: float | None  # the track's (FMA's track_duration), not the clip's
    audio_path: str  # the clip on the server's disk (never sent to HTTP clients)
    file_duration_s: float | None  # the clip file's length (what a playlist plays)


def check_k(k: int, max_k: int | None = None) -> None:
    if k < 1 or (max_k is not None and k > max_k):
        bounds = ">= 1" if max_k is None else f"between 1 and {max_k}"
        raise ValueError(f"k must be {bounds}, got {k}")


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class SearchIndex:
    """One build of `track_embeddings` in memory: catalog, vector index, info."""

    catalog: Catalog
    vectors: VectorIndex
    info: IndexInfo

    def __len__(self) -> int:
        return len(self.catalog.track_ids)

    def rank(
        self, query: np.ndarray, k: int, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row positions and scores of the best ``k`` rows that pass ``filters``."""
        allowed = self.catalog.allowed(filters or Filters())
        return self.vectors.search(query, k, allowed)

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

    def search(self, query: np.ndarray, k: int, filters: Filters | None = None) -> list[Result]:
        """Top ``k`` tracks for a query embedding among those that pass ``filters``."""
        return self.results(*self.rank(query, k, filters))

    def similar(self, track_id: int, k: int) -> list[Result]:
        """Audio->audio neighbours of an indexed track (the track itself left out)."""
        pos = self.catalog.position(track_id)
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
    return SearchIndex(collection.catalog, vectors, collection.info)


@dataclass(frozen=True)
class QueryEncoder:
    """The model that embeds queries, and how many may run at once."""

    model: ModelChoice
    clap: object  # clap_pipeline.model.clap.LoadedClap
    encode: Encoder
    kind: str  # text_encoder.ENCODER_KINDS
    slots: threading.Semaphore

    def embed(self, text: str) -> np.ndarray:
        # At most one forward per core (each on its own threads, see ``serve``): more
        # would only fight over the cores.
        with self.slots:
            return self.encode([text])[0]


def load_query_encoder(
    model: ModelChoice, kind: str, cache_dir: Path, threads: int = 1
) -> QueryEncoder:
    """Load ``model`` and its text encoder of ``kind`` (ONNX graphs cached in ``cache_dir``)."""
    from clap_pipeline.model.clap import load_clap

    clap = load_clap(model.source)
    clap.model.eval()
    # ONNX graphs are exported from this very model (cached by its weights' hash): no drift.
    encode = build_encoder(clap, kind, cache_dir, threads)
    slots = threading.Semaphore(max(1, usable_cpus() // threads))
    return QueryEncoder(model, clap, encode, kind, slots)


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
        self, query: str, k: int, filters: Filters | None = None, max_k: int | None = None
    ) -> list[Result]:
        """Top ``k`` tracks for a text query among those that pass ``filters``."""
        text = validate_query(query)
        check_k(k, max_k)
        return self.index.search(self.encoder.embed(text), k, filters)

    def similar(self, track_id: int, k: int, max_k: int | None = None) -> list[Result]:
        check_k(k, max_k)
        return self.index.similar(track_id, k)


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
    return settings.duckdb_path.parent / CACHE_DIR_NAME / "onnx"


def search(
    settings: Settings,
    query: str,
    k: int,
    model_arg: str | None = None,
    filters: Filters | None = None,
) -> list[Result]:
    """One query from a command line: the champion (or ``model_arg``) in PyTorch, top ``k``.

    Cheap checks first (query, k, the table and its model version), then the model load.
    The index scans exactly: building an IVF index only pays off over many queries.
    """
    validate_query(query)
    check_k(k)
    info = index_info(settings.duckdb_path)
    model = query_model(settings, info, model_arg, follow_table=False)
    encoder = load_query_encoder(model, "torch", encoder_cache_dir(settings))
    collection = read_collection(settings.duckdb_path)
    index = build_search_index(collection, exact_max_rows=collection.info.count)
    return make_searcher(encoder, index, settings.registered_model).search(query, k, filters)
