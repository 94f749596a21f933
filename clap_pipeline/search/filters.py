"""Search filters: genre, release year, licence class, track duration.

A filter turns into the set of index rows it allows (``Catalog.allowed``); the vector
index then ranks only those rows (``VectorIndex.search(..., allowed=...)``), so ``k``
filtered results come back whenever ``k`` tracks match.

Licences. FMA's ``track.license`` holds the licence's title as the site showed it
(114 distinct values in fma_full), e.g.

- ``Attribution 4.0 International`` / ``Attribution 3.0 United States`` (CC BY)
- ``Attribution-ShareAlike 3.0 International`` (CC BY-SA)
- ``Attribution-NoDerivatives 4.0 International`` (CC BY-ND)
- ``Attribution-NonCommercial 3.0 United States`` (CC BY-NC)
- ``Attribution-NonCommercial-ShareAlike 3.0 International`` (CC BY-NC-SA)
- ``Attribution-Noncommercial-No Derivative Works 3.0 United States``,
  ``Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International``,
  ``Creative Commons Attribution-NonCommercial-NoDerivatives 4.0`` (CC BY-NC-ND)
- ``CC0 1.0 Universal``, ``Public Domain Mark 1.0`` (no conditions)
- ``Free Art License`` (copyleft, commercial use and changes allowed)
- ``FMA-Limited: Download Only`` and the like (no reuse granted)

``license_terms`` reads a title's terms from its words (spelling, case, hyphens and
version/jurisdiction vary); a title it does not recognise grants nothing. The classes:

- ``commercial-ok``: commercial use allowed (no NonCommercial term);
- ``derivatives-ok``: changes allowed, e.g. sampling or remixing (no NoDerivatives term);
- ``commercial-derivatives-ok``: both (what a producer sampling for a release needs);
- ``public-domain``: CC0 or the Public Domain Mark (not even attribution required).

Any other ``license`` value is matched as an exact licence title (case-insensitive).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# How a query ranks (search/engine.py): the audio embedding, BM25 over the names, or both
# fused. Here, with the other choices a query makes, so the CLI's parser needs no engine.
MODES = ("hybrid", "audio", "text")
DEFAULT_MODE = "hybrid"

LICENSE_CLASSES = (
    "commercial-ok",
    "derivatives-ok",
    "commercial-derivatives-ok",
    "public-domain",
)
MAX_GENRE_LENGTH = 100
MAX_LICENSE_LENGTH = 200
MIN_YEAR, MAX_YEAR = 1000, 9999


@dataclass(frozen=True)
class LicenseTerms:
    known: bool  # a licence this module recognises (else: nothing is granted)
    commercial: bool
    derivatives: bool
    public_domain: bool


_NONE = LicenseTerms(False, False, False, False)


def license_terms(title: str | None) -> LicenseTerms:
    """What a licence title as FMA writes it allows (see the module docstring)."""
    if not title:
        return _NONE
    words = re.sub(r"[^a-z0-9]+", "", title.casefold())
    if "publicdomain" in words or words.startswith("cc0") or "cczero" in words:
        return LicenseTerms(True, True, True, True)
    if "freeartlicen" in words or "licenceartlibre" in words:
        return LicenseTerms(True, True, True, False)
    if "attribution" not in words and not re.search(r"\bcc[ -]?by\b", title.casefold()):
        return _NONE
    non_commercial = "noncommercial" in words
    no_derivatives = "noderiv" in words
    return LicenseTerms(True, not non_commercial, not no_derivatives, False)


def in_license_class(title: str | None, license_class: str) -> bool:
    terms = license_terms(title)
    if license_class == "commercial-ok":
        return terms.commercial
    if license_class == "derivatives-ok":
        return terms.derivatives
    if license_class == "commercial-derivatives-ok":
        return terms.commercial and terms.derivatives
    if license_class == "public-domain":
        return terms.public_domain
    raise ValueError(f"license class {license_class!r}: expected one of {LICENSE_CLASSES}")


def license_matches(title: str | None, wanted: str) -> bool:
    """``wanted`` is a class of ``LICENSE_CLASSES`` or an exact licence title."""
    if wanted in LICENSE_CLASSES:
        return in_license_class(title, wanted)
    return title is not None and title.casefold() == wanted.casefold()


@dataclass(frozen=True)
class Filters:
    genre: str | None = None
    year_min: int | None = None
    year_max: int | None = None
    license: str | None = None
    max_duration: float | None = None

    def __post_init__(self) -> None:
        if self.genre is not None and not self.genre.strip():
            raise ValueError("genre is empty: give a genre name, e.g. Folk")
        if self.license is not None and not self.license.strip():
            raise ValueError(f"license is empty: give one of {', '.join(LICENSE_CLASSES)}")
        if self.max_duration is not None and not self.max_duration > 0:
            raise ValueError(f"max_duration must be > 0 seconds, got {self.max_duration}")

    @property
    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.genre, self.year_min, self.year_max, self.license, self.max_duration)
        )


class TrackNotFoundError(KeyError):
    """The track id is not in the served index."""


@dataclass(frozen=True)
class Catalog:
    """Per-track metadata in index row order (ascending track id), and the filter columns."""

    track_ids: np.ndarray  # int64 (N,)
    titles: list[str | None]
    artists: list[str | None]
    genres: list[str | None]
    audio_paths: list[str]
    licenses: list[str | None] = field(default_factory=list)
    genre_lists: list[list[str]] = field(default_factory=list)
    years: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))  # NaN: unknown
    durations: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))  # track's s
    # the audio file's length in s (FMA's files are 30-s clips; playlists show it), NaN: unknown
    file_durations: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    albums: list[str | None] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)  # FMA's track tags
    # casefolded genre name -> bool mask of the rows that have it (top genre or any genre)
    genre_masks: dict[str, np.ndarray] = field(default_factory=dict)
    license_titles: list[str | None] = field(default_factory=list)  # distinct licences
    license_codes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))

    def position(self, track_id: int) -> int:
        pos = int(np.searchsorted(self.track_ids, track_id))
        if pos >= len(self.track_ids) or int(self.track_ids[pos]) != track_id:
            raise TrackNotFoundError(track_id)
        return pos

    def allowed(self, filters: Filters) -> np.ndarray | None:
        """Bool mask of the rows that pass ``filters``; None when nothing is filtered."""
        if not filters.active:
            return None
        n = len(self.track_ids)
        mask = np.ones(n, dtype=np.bool_)
        if filters.genre is not None:
            genre_mask = self.genre_masks.get(filters.genre.strip().casefold())
            mask &= genre_mask if genre_mask is not None else False
        with np.errstate(invalid="ignore"):  # NaN (unknown) compares False: filtered out
            if filters.year_min is not None:
                mask &= self.years >= filters.year_min
            if filters.year_max is not None:
                mask &= self.years <= filters.year_max
            if filters.max_duration is not None:
                mask &= self.durations <= filters.max_duration
        if filters.license is not None:
            wanted = filters.license.strip()
            ok = np.array([license_matches(t, wanted) for t in self.license_titles], dtype=np.bool_)
            mask &= ok[self.license_codes] if len(ok) else False
        return mask


def _floats(values: Sequence) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def build_catalog(columns: Mapping[str, Sequence]) -> Catalog:
    """From the table's columns (``search.index.CATALOG_COLUMNS``; a missing one is NULL)."""
    ids = list(columns["track_id"])
    n = len(ids)

    def column(name: str) -> list:
        values = columns.get(name)
        return [None] * n if values is None else list(values)

    top = column("genre")
    genre_lists = [
        [g for g in (names or []) if g] or ([t] if t else [])
        for names, t in zip(column("genres"), top, strict=True)
    ]
    masks: dict[str, np.ndarray] = {}
    for pos, names in enumerate(genre_lists):
        for name in {g.casefold() for g in names}:
            if name not in masks:
                masks[name] = np.zeros(n, dtype=np.bool_)
            masks[name][pos] = True
    licenses = column("license")
    titles = sorted(set(licenses), key=lambda t: (t is None, t or ""))
    code_of = {t: i for i, t in enumerate(titles)}
    return Catalog(
        track_ids=np.array(ids, dtype=np.int64),
        titles=column("title"),
        artists=column("artist"),
        genres=top,
        audio_paths=column("audio_path"),
        licenses=licenses,
        genre_lists=genre_lists,
        years=_floats(column("year")),
        durations=_floats(column("track_duration_s")),
        file_durations=_floats(column("duration_s")),
        albums=column("album"),
        tags=[[t for t in (tags or []) if t] for tags in column("tags")],
        genre_masks=masks,
        license_titles=titles,
        license_codes=np.array([code_of[t] for t in licenses], dtype=np.int32),
    )
