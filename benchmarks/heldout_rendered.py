"""A rendered FMA-format collection from generators the stand-in's pre-training never used.

The offline stand-in (docs/stand-in.md) is pre-trained on General-MIDI arrangements of four
schemes (``demo/schemes.py``) played through two soundfonts (FluidR3, MuseScore General)
and on the demo synthesiser. To measure it on music it never heard, this script writes a
collection whose every generator is held out:

- **an arrangement scheme** of its own, defined only here (``HELDOUT``): other bands per
  genre, other progressions and grooves, syncopated bass, sustained chords, riffs, its
  own tempo, key and mix;
- **a soundfont** the pre-training never loads: TimGM6mb (Debian's ``timgm6mb-soundfont``);
- metadata planned by ``demo.plan_dataset`` with another seed (11), its tags naming the
  instruments this scheme gave each track.

No captions file: like a collection someone else made, it has FMA's metadata only. Run the
README's demo path on it (and ``benchmarks/alt_collection.py``'s synthesiser, the other
held-out generator):

    .venv/bin/python benchmarks/heldout_rendered.py --out /tmp/heldout --tracks 500
    FMA_METADATA_DIR=/tmp/heldout/fma_metadata FMA_AUDIO_DIR=/tmp/heldout/fma_audio \\
        CLAP_DATA_DIR=/tmp/heldout/data scripts/demo.sh
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.alt_collection import write_collection  # noqa: E402
from clap_pipeline.demo import encode  # noqa: E402
from clap_pipeline.demo import plan as demo  # noqa: E402
from clap_pipeline.demo.rendered import (  # noqa: E402
    CLAP,
    CRASH,
    DOM7,
    HAT,
    KICK,
    MAJ7,
    MAJOR,
    MIN7,
    MINOR,
    OPEN_HAT,
    RIDE,
    SNARE,
    Scheme,
    render_batch,
)

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # apt-get install timgm6mb-soundfont
BATCH = 48

HELDOUT = Scheme(
    name="heldout",
    band={
        "rock": (0, ("bass",), ("electric guitar", "organ"), ("saxophone",)),
        "electronic": (25, ("synth bass",), ("organ", "synth pad"), ("vibraphone", "synth lead")),
        "hiphop": (25, ("bass",), ("electric guitar", "electric piano"), ("trumpet",)),
        "folk": (None, ("cello",), ("acoustic guitar", "piano"), ("clarinet", "harmonica")),
        "classical": (None, ("upright bass", "cello"), ("harp", "organ"), ("trumpet", "violin")),
        "jazz": (32, ("bass",), ("organ", "vibraphone"), ("flute", "trumpet")),
        "pop": (25, ("synth bass",), ("electric piano", "strings"), ("flute",)),
        "experimental": (None, ("upright bass",), ("strings", "electric guitar"), ("fiddle",)),
    },
    progressions={
        "rock": ((4, MINOR), (9, MINOR), (2, MAJOR), (7, MAJOR)),
        "electronic": ((0, MINOR), (3, MAJOR), (10, MAJOR), (5, MINOR)),
        "hiphop": ((0, MIN7), (3, MAJ7), (5, MIN7), (10, DOM7)),
        "folk": ((0, MAJOR), (2, MINOR), (5, MAJOR), (0, MAJOR)),
        "classical": ((0, MAJOR), (4, MINOR), (5, MAJOR), (7, DOM7)),
        "jazz": ((0, MIN7), (5, DOM7), (10, MAJ7), (3, MAJ7)),
        "pop": ((0, MAJOR), (4, MINOR), (5, MAJOR), (7, MAJOR)),
        "experimental": ((0, (0, 4, 8)), (4, (0, 4, 8)), (1, (0, 3, 6)), (9, (0, 5, 10))),
    },
    grooves={
        "rock": {KICK: (0, 7, 8, 14), SNARE: (4, 12), CRASH: (0,), HAT: tuple(range(0, 16, 4))},
        "electronic": {KICK: (0, 6, 8, 14), CLAP: (12,), OPEN_HAT: (4, 12), HAT: (2, 10)},
        "hiphop": {KICK: (0, 5, 11), SNARE: (8,), HAT: (0, 3, 6, 9, 12, 15)},
        "jazz": {RIDE: (0, 2, 4, 6, 8, 10, 12, 14), SNARE: (7, 15)},
        "pop": {KICK: (0, 10), CLAP: (4, 12), HAT: (1, 5, 9, 13)},
    },
    tempo_scale=0.95,
    transpose=-5,
    bass="syncopated",
    comp="sustain",
    lead="riff",
    velocity=0.9,
    mix=True,
)


def write_clips(plans: list[demo.TrackPlan], audio_root: Path) -> None:
    """One FluidSynth run for the batch's clips, then demo-data's encoding (and defects)."""
    audible = [p for p in plans if p.defect not in (demo.DEFECT_MISSING, demo.DEFECT_EMPTY)]
    seconds = encode.CLIP_SECONDS + 0.05  # covers the few hundredths demo-data adds
    tracks = [(p.params, HELDOUT) for p in audible]
    rendered = render_batch(tracks, seconds, SOUNDFONT)
    audio = dict(zip([p.track_id for p in audible], rendered, strict=True))
    for plan in plans:
        encode.write_clip(plan, audio_root, audio.get(plan.track_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tracks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=2, help="parallel FluidSynth runs")
    args = parser.parse_args()
    if not SOUNDFONT.is_file():
        sys.exit(f"{SOUNDFONT} is missing: apt-get install timgm6mb-soundfont")
    started = time.perf_counter()
    plans = demo.plan_dataset(args.tracks, args.seed, renderer="fluidsynth", scheme=HELDOUT)
    write_collection(args.out, plans, write_clips, BATCH, args.workers)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(
        f"{len(plans)} tracks (seed {args.seed}, scheme {HELDOUT.name}, {SOUNDFONT.name}) in "
        f"{time.perf_counter() - started:.1f} s under {args.out}; load average {' '.join(load)}"
    )


if __name__ == "__main__":
    main()
