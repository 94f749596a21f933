"""Licence classes from FMA's real licence titles, and the catalog's filter masks."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.search.filters import Filters, build_catalog, license_matches, license_terms

# (title as in FMA's tracks.csv, commercial use, derivatives, public domain)
FMA_LICENSES = [
    ("Attribution 4.0 International", True, True, False),
    ("Attribution 3.0 United States", True, True, False),
    ("Attribution-ShareAlike 3.0 International", True, True, False),
    ("Attribution-NoDerivatives 4.0 International", True, False, False),
    ("Attribution-NonCommercial 3.0 United States", False, True, False),
    ("Attribution-NonCommercial-ShareAlike 3.0 International", False, True, False),
    ("Attribution-Noncommercial-No Derivative Works 3.0 United States", False, False, False),
    (
        "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
        False,
        False,
        False,
    ),
    ("Creative Commons Attribution-NonCommercial-NoDerivatives 4.0", False, False, False),
    ("CC0 1.0 Universal", True, True, True),
    ("Public Domain Mark 1.0", True, True, True),
    ("Free Art License", True, True, False),
    ("FMA-Limited: Download Only", False, False, False),
    (None, False, False, False),
]


@pytest.mark.parametrize(("title", "commercial", "derivatives", "public"), FMA_LICENSES)
def test_license_classes_of_fma_titles(
    title: str | None, commercial: bool, derivatives: bool, public: bool
) -> None:
    terms = license_terms(title)
    assert (terms.commercial, terms.derivatives, terms.public_domain) == (
        commercial,
        derivatives,
        public,
    )
    assert license_matches(title, "commercial-ok") == commercial
    assert license_matches(title, "derivatives-ok") == derivatives
    assert license_matches(title, "commercial-derivatives-ok") == (commercial and derivatives)
    assert license_matches(title, "public-domain") == public


def test_exact_license_title_matches_case_insensitively() -> None:
    assert license_matches("CC0 1.0 Universal", "cc0 1.0 universal")
    assert not license_matches("CC0 1.0 Universal", "CC0")
    assert not license_matches(None, "CC0 1.0 Universal")


def test_catalog_masks_combine_every_filter() -> None:
    names = ("track_id", "title", "artist", "genre", "audio_path", "license", "genres")
    names += ("year", "track_duration_s", "duration_s")
    rows = [
        (1, "a", "x", "Folk", "/1.mp3", "Attribution 4.0 International", ["Folk"], 2009, 200.0, 30),
        (2, "b", "x", None, "/2.mp3", "CC0 1.0 Universal", ["Rock", "Folk"], 2015, 400.0, 30),
        (
            3,
            "c",
            "x",
            "Rock",
            "/3.mp3",
            "Attribution-NonCommercial 3.0 United States",
            None,
            None,
            None,
            None,
        ),
        (4, "d", "x", "Jazz", "/4.mp3", None, ["Jazz", "Free-Jazz"], 2020, 90.0, 29.5),
    ]
    catalog = build_catalog(dict(zip(names, zip(*rows, strict=True), strict=True)))

    def ids(**kwargs: object) -> list[int]:
        mask = catalog.allowed(Filters(**kwargs))  # type: ignore[arg-type]
        assert mask is not None
        return catalog.track_ids[mask].tolist()

    assert catalog.allowed(Filters()) is None
    assert ids(genre="folk") == [1, 2]  # top genre or any genre, case-insensitive
    assert ids(genre="Free-Jazz") == [4]
    assert ids(genre="Rock") == [2, 3]  # no genres list: the top genre counts
    assert ids(genre="Polka") == []
    assert ids(year_min=2010) == [2, 4]  # unknown year: filtered out
    assert ids(year_min=2010, year_max=2016) == [2]
    assert ids(year_min=2016, year_max=2010) == []
    assert ids(license="commercial-ok") == [1, 2]
    assert ids(license="public-domain") == [2]
    assert ids(license="attribution-noncommercial 3.0 united states") == [3]
    assert ids(max_duration=200) == [1, 4]
    assert ids(genre="Folk", license="commercial-ok", max_duration=300) == [1]
    assert catalog.genre_lists[2] == ["Rock"] and np.isnan(catalog.years[2])
    assert catalog.file_durations[3] == 29.5 and np.isnan(catalog.file_durations[2])
