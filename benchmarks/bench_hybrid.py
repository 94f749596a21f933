"""Hybrid search (audio + BM25 over the names, fused by reciprocal rank) next to audio alone.

On a collection made offline (``--collection demo``: ``clap-pipeline demo-data``'s
generator; ``alt``: ``alt_collection.py``'s synthesiser, which this project's models were
not tuned on; or ``--source`` any folder with ``fma_metadata/`` and ``fma_audio/``), the
clips are embedded by a model (default: the shipped pre-trained stand-in, what the demo
fine-tunes) into `track_embeddings` with its lexical index (``search_collection.py``),
and the same queries run through the one search path (``search/engine.py``) in
``audio`` and ``hybrid`` mode:

- names: each artist with >= 3 tracks, as the query alone and with a description
  ("<artist> <their genre> music"): the share of the artist's tracks among the top 10
  (of min(10, the artist's tracks));
- descriptions: "<genre> music" and "This audio is a <genre> song." (the evaluation's
  genre queries) and "<instrument> music" (its instrument queries, where tags name
  instruments): precision@10 of the genre's (instrument's) tracks.

Target: names much better in hybrid; descriptions no worse than audio alone.
Usage: python benchmarks/bench_hybrid.py --collection demo|alt [--tracks 500] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_collection as sc

from clap_pipeline.evaluation.instrument_search import (
    INSTRUMENT_QUERY,
    INSTRUMENT_VOCABULARY,
    MIN_INSTRUMENT_TRACKS,
)
from clap_pipeline.genre_search import GENRE_QUERIES, MIN_GENRE_TRACKS
from clap_pipeline.search.engine import TEXT_WEIGHT, SearchIndex, build_search_index
from clap_pipeline.search.index import read_collection

K = 10
MIN_ARTIST_TRACKS = 3


def make_source(kind: str, out: Path, tracks: int) -> Path:
    source = out / "source"
    if kind == "demo":
        from clap_pipeline.demo.collection import write_demo_dataset

        # As `make demo` does: General-MIDI renderings where FluidSynth is installed.
        renderer = "fluidsynth" if shutil.which("fluidsynth") else "synth"
        write_demo_dataset(source, tracks, seed=0, renderer=renderer, log=None)
    else:
        script = Path(__file__).with_name("alt_collection.py")
        command = [sys.executable, str(script), "--out", str(source), "--tracks", str(tracks)]
        subprocess.run([*command, "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
    return source


def top_k(index: SearchIndex, embed, text: str, mode: str) -> list[int]:
    embedding = embed(text)
    positions, _ = index.rank(text, embedding, K, mode=mode)
    return positions.tolist()


def name_queries(index: SearchIndex) -> dict[str, list[tuple[str, set[int]]]]:
    """Artist queries alone and with a description, each with the artist's rows."""
    c = index.catalog
    rows: dict[str, list[int]] = {}
    for pos, artist in enumerate(c.artists):
        if artist:
            rows.setdefault(artist, []).append(pos)
    alone, described = [], []
    for artist, positions in sorted(rows.items()):
        if len(positions) < MIN_ARTIST_TRACKS:
            continue
        genre = Counter(c.genres[p] for p in positions if c.genres[p]).most_common(1)
        alone.append((artist, set(positions)))
        if genre:
            described.append((f"{artist} {genre[0][0].lower()} music", set(positions)))
    return {"artist name": alone, "artist name + description": described}


def description_queries(index: SearchIndex) -> dict[str, list[tuple[str, set[int]]]]:
    c = index.catalog
    by_genre: dict[str, set[int]] = {}
    for pos, names in enumerate(c.genre_lists):
        for g in names:
            by_genre.setdefault(g, set()).add(pos)
    genres = {g: p for g, p in sorted(by_genre.items()) if len(p) >= MIN_GENRE_TRACKS}
    out = {
        f"'{template}'": [(template.format(genre=g), p) for g, p in genres.items()]
        for template in GENRE_QUERIES.values()
    }
    by_instrument: dict[str, set[int]] = {}
    for pos, tags in enumerate(c.tags):
        for tag in tags:
            if tag.casefold() in INSTRUMENT_VOCABULARY:
                by_instrument.setdefault(tag.casefold(), set()).add(pos)
    instruments = [
        (INSTRUMENT_QUERY.format(instrument=i), p)
        for i, p in sorted(by_instrument.items())
        if len(p) >= MIN_INSTRUMENT_TRACKS
    ]
    if instruments:
        out[f"'{INSTRUMENT_QUERY}'"] = instruments
    return out


def measure(index: SearchIndex, embed, queries, share_of_artist: bool) -> list[tuple]:
    """(kind, n, audio, hybrid with the names at weight 1 (plain RRF), hybrid as served)."""
    rows = []
    for kind, items in queries.items():
        if not items:
            continue
        scores = []
        for mode, weight in (("audio", None), ("hybrid", 1.0), ("hybrid", TEXT_WEIGHT)):
            ranker = replace(index, text_weight=weight) if weight else index
            values = []
            for text, relevant in items:
                found = len(set(top_k(ranker, embed, text, mode)) & relevant)
                values.append(found / (min(K, len(relevant)) if share_of_artist else K))
            scores.append(float(np.mean(values)))
        rows.append((kind, len(items), *scores))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", choices=["demo", "alt"], default="demo")
    parser.add_argument("--source", type=Path, help="fma_metadata/ + fma_audio/ to use instead")
    parser.add_argument("--tracks", type=int, default=500)
    parser.add_argument("--model", type=Path, default=sc.STAND_IN, help="model folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--reuse", action="store_true", help="measure --out's collection again (no rebuild)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clap-hybrid-") as tmp:
        out = args.out or Path(tmp)
        print(f"load average {os.getloadavg()} on {os.cpu_count()} cores")
        started = time.monotonic()
        data = out / "data"
        if not (args.reuse and (data / "clap.duckdb").exists()):
            source = args.source or make_source(args.collection, out, args.tracks)
            sc.load_tracks(data, source / "fma_metadata")
            clips = sc.decode_clips(source / "fma_audio", data)
            sc.write_index(data, clips, sc.embed(args.model, clips.windows), None)
        index = build_search_index(read_collection(data / "clap.duckdb"))
        print(
            f"{args.source or args.collection} collection: {len(index)} tracks embedded by "
            f"{args.model.name} ({time.monotonic() - started:.0f} s); hybrid as served: the "
            f"names' ranking weighted {TEXT_WEIGHT:g} (RRF 1:1: plain reciprocal rank fusion)"
        )
        encode = sc.text_encoder(args.model)
        names = measure(index, encode, name_queries(index), share_of_artist=True)
        descriptions = measure(index, encode, description_queries(index), share_of_artist=False)
        served = f"hybrid {TEXT_WEIGHT:g}"
        print(f"{'queries':<42}{'n':>5}{'audio':>9}{'RRF 1:1':>9}{served:>11}")
        print("share of the artist's tracks in the top 10 (of min(10, their tracks)):")
        for kind, n, audio, plain, hybrid in names:
            print(f"  {kind:<40}{n:>5}{audio:>9.2f}{plain:>9.2f}{hybrid:>11.2f}")
        print("precision@10 of the genre's / instrument's tracks:")
        for kind, n, audio, plain, hybrid in descriptions:
            print(f"  {kind:<40}{n:>5}{audio:>9.2f}{plain:>9.2f}{hybrid:>11.2f}")
        worse = [kind for kind, _, audio, _, hybrid in descriptions if hybrid < audio]
        print(f"descriptions: hybrid {'worse on ' + ', '.join(worse) if worse else 'no worse'}")
        print(f"load average {os.getloadavg()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
