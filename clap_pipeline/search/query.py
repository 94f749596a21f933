"""Text-to-music search: a query's embedding against the `track_embeddings` index.

The index is ``search/index.py``, the query's embedding ``search/text_encoder.py``, the
model ``model/choice.py``; the table is written by ``search/build.py``; results are
formatted by ``search/results.py``; ``cli/search.py`` is the command line.
"""

from __future__ import annotations

import numpy as np

from clap_pipeline.config import Settings
from clap_pipeline.feedback import validate_query
from clap_pipeline.model.choice import resolve_model
from clap_pipeline.search.filters import Filters, build_catalog
from clap_pipeline.search.index import (
    TABLE,
    SearchError,
    SearchHit,
    catalog_rows,
    fetch_hits,
    index_info,
    open_index,
    top_k,
)
from clap_pipeline.search.text_encoder import encode_query


def search(
    settings: Settings,
    query: str,
    k: int,
    model_arg: str | None = None,
    filters: Filters | None = None,
) -> list[SearchHit]:
    """Top ``k`` tracks for a text query among those that pass ``filters`` (all when k >= N)."""
    from clap_pipeline.model.clap import load_clap

    text = validate_query(query)
    if k < 1:
        raise ValueError(f"the number of results must be >= 1, got {k}")
    model = resolve_model(model_arg, settings.mlflow_tracking_uri, settings.registered_model)
    # Fail before the (slow) model load when the embeddings are missing or stale.
    info = index_info(settings.duckdb_path)
    if model.version is not None and info.model_version not in (None, model.version):
        raise SearchError(
            f"`{TABLE}` was computed with {settings.registered_model} version {info.model_version}, "
            f"the query model is {model.name}: materialize `{TABLE}` again (it uses the "
            f"champion) or pass --model models:/{settings.registered_model}/{info.model_version}"
        )
    clap = load_clap(model.source)
    query_emb = encode_query(clap, text)
    if query_emb.shape[0] != info.dim:
        raise SearchError(
            f"model {model.name} embeds text in {query_emb.shape[0]} dimensions but `{TABLE}` "
            f"holds {info.dim}-d embeddings (model version {info.model_version}): use the "
            f"model that built them, or materialize `{TABLE}` with this one"
        )
    with open_index(settings.duckdb_path) as index:
        if index.model_version != info.model_version or index.dim != info.dim:
            raise SearchError(f"`{TABLE}` was rebuilt during the search: run it again")
        if filters is None or not filters.active:
            return index.search(query_emb, k)
        assert index.con is not None
        allowed = build_catalog(catalog_rows(index.con)).allowed(filters)
        rows = np.flatnonzero(allowed)
        if len(rows) == 0:
            return []
        best, scores = top_k(index.matrix[rows], query_emb, k)  # ranked among the allowed rows
        return fetch_hits(index.con, index.track_ids[rows[best]], scores)
