"""BM25 over what a person types by name: title, artist, album, genres and tags of each track.

The scorer is bm25s (sparse-matrix BM25, Lucene's variant by default; English stop words,
lower case, every word of one or more letters or digits, no stemming: names are matched
as written). One document per catalog row, in
the catalog's row order, so its positions are the vector index's.

Kept in step with `track_embeddings`: the index is saved next to the DuckDB file in a
folder named by the table's fingerprint (like the matrix's .npy cache). The
`track_embeddings` asset writes it right after the table (``search/build.py``); a reader
that finds none for its table's fingerprint builds it from the catalog and saves it
(best effort), so a search never uses names of another build of the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from clap_pipeline.search.filters import Catalog

DIR_PREFIX = "lexical-"
TOKEN_PATTERN = r"(?u)\b\w+\b"  # words of one character too: "Artist 1", "Vol 2"


def track_text(catalog: Catalog, pos: int) -> str:
    """The names of one track, as one document."""
    parts = [
        catalog.titles[pos],
        catalog.artists[pos],
        catalog.albums[pos] if catalog.albums else None,
        *catalog.genre_lists[pos],
        *(catalog.tags[pos] if catalog.tags else []),
    ]
    return " ".join(p for p in parts if p)


def _tokenize(texts: list[str], *, ids: bool):
    import bm25s

    return bm25s.tokenize(
        texts, token_pattern=TOKEN_PATTERN, stopwords="en", return_ids=ids, show_progress=False
    )


class LexicalIndex:
    """``rank(text, k, allowed)`` -> (row positions, BM25 scores) of the rows that match."""

    def __init__(self, bm25) -> None:
        self.bm25 = bm25  # bm25s.BM25

    @property
    def size(self) -> int:
        return int(self.bm25.scores["num_docs"])

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every row (0 where no query term occurs)."""
        (tokens,) = _tokenize([text], ids=False)
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.bm25.get_scores(tokens), dtype=np.float32)

    def rank(
        self, text: str, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows with a positive score (among ``allowed``), ties by row order."""
        scores = self.scores(text)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        matching = np.flatnonzero(scores > 0)
        order = np.lexsort((matching, -scores[matching]))[:k]
        best = matching[order]
        return best, scores[best]


def build_lexical_index(catalog: Catalog) -> LexicalIndex:
    import bm25s

    texts = [track_text(catalog, pos) for pos in range(len(catalog.track_ids))]
    bm25 = bm25s.BM25()
    bm25.index(_tokenize(texts, ids=True), show_progress=False)
    return LexicalIndex(bm25)


def index_dir(cache_dir: Path, fingerprint: tuple) -> Path:
    key = hashlib.sha1(repr(fingerprint).encode()).hexdigest()[:16]
    return cache_dir / f"{DIR_PREFIX}{key}"


def save_lexical_index(index: LexicalIndex, folder: Path) -> None:
    """Written aside and renamed into place; other builds' folders are removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".lexical-"))
    try:
        index.bm25.save(str(tmp))
        tmp.replace(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise
    for old in folder.parent.glob(f"{DIR_PREFIX}*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_or_build(catalog: Catalog, cache_dir: Path, fingerprint: tuple) -> LexicalIndex:
    """The saved index of this build of the table, else one built now (and saved)."""
    import bm25s

    folder = index_dir(cache_dir, fingerprint)
    if folder.is_dir():
        with contextlib.suppress(Exception):  # unreadable or partial: build it again
            index = LexicalIndex(bm25s.BM25.load(str(folder)))
            if index.size == len(catalog.track_ids):
                return index
    index = build_lexical_index(catalog)
    with contextlib.suppress(OSError):  # a read-only data folder: build it each time
        save_lexical_index(index, folder)
    return index
