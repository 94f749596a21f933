"""More ways to arrange a genre than the demo collection's, for the stand-in's pre-training.

A collection someone else made was arranged by someone else: other bands for a genre,
other progressions and grooves, another way of comping, another mix. The stand-in's
pre-training corpus (``pretrain.plan_corpus``) therefore draws every clip's arrangement
from several ``rendered.Scheme`` s — the demo's ``BAND`` and the three below — and plays
it through more than one soundfont (``PRETRAIN_SOUNDFONTS``). Each scheme keeps the
conventions that make a genre recognisable (rock has guitars and a backbeat, jazz swings
on a ride, folk has no drum kit) and changes the rest.
"""

from __future__ import annotations

from pathlib import Path

from clap_pipeline.demo.rendered import (
    BAND,
    CLAP,
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
)

SUS2, SUS4, ADD9 = (0, 2, 7), (0, 5, 7), (0, 4, 7, 14)

SESSION = Scheme(
    name="session",
    band={
        "rock": (0, ("bass",), ("electric guitar", "piano"), ("harmonica", "distorted guitar")),
        "electronic": (
            25,
            ("synth bass", "bass"),
            ("electric piano", "synth pad"),
            ("synth lead",),
        ),
        "hiphop": (25, ("synth bass",), ("piano", "organ", "strings"), ("saxophone", "synth lead")),
        "folk": (None, ("bass", "cello"), ("nylon guitar", "acoustic guitar"), ("flute", "violin")),
        "classical": (
            None,
            ("upright bass",),
            ("strings", "organ", "choir"),
            ("clarinet", "trumpet"),
        ),
        "jazz": (
            32,
            ("bass",),
            ("electric piano", "electric guitar", "organ"),
            ("trumpet", "clarinet"),
        ),
        "pop": (16, ("synth bass", "bass"), ("acoustic guitar", "electric piano"), ("violin",)),
        "experimental": (25, ("cello",), ("harp", "organ", "electric piano"), ("clarinet",)),
    },
    progressions={
        "rock": ((0, MAJOR), (10, MAJOR), (5, MAJOR), (0, MAJOR)),
        "electronic": ((0, MINOR), (5, MINOR), (8, MAJOR), (7, MAJOR)),
        "hiphop": ((0, MINOR), (3, MAJ7), (8, MAJ7), (7, MIN7)),
        "folk": ((0, MAJOR), (7, MAJOR), (9, MINOR), (5, MAJOR)),
        "classical": ((0, MAJOR), (9, MINOR), (2, MINOR), (7, DOM7)),
        "jazz": ((0, MAJ7), (9, MIN7), (2, MIN7), (7, DOM7)),
        "pop": ((0, MAJOR), (5, MAJOR), (9, MINOR), (7, MAJOR)),
        "experimental": ((0, SUS2), (1, SUS4), (6, SUS2), (11, SUS4)),
    },
    grooves={
        "rock": {KICK: (0, 6, 8), SNARE: (4, 12), HAT: tuple(range(0, 16, 2)), OPEN_HAT: (14,)},
        "electronic": {KICK: (0, 4, 8, 12), SNARE: (4, 12), HAT: tuple(range(2, 16, 4))},
        "hiphop": {KICK: (0, 3, 10), CLAP: (4, 12), HAT: tuple(range(16))},
        "jazz": {RIDE: (0, 4, 6, 8, 12, 14), HAT: (4, 12)},
        "pop": {KICK: (0, 8), SNARE: (4, 12), HAT: tuple(range(0, 16, 2))},
    },
    tempo_scale=1.08,
    transpose=-3,
    bass="octaves",
    comp="strum",
    lead="riff",
    mix=True,
)

STUDIO = Scheme(
    name="studio",
    band={
        "rock": (16, ("bass", "synth bass"), ("distorted guitar", "organ"), ("synth lead",)),
        "electronic": (25, ("synth bass",), ("synth pad", "vibraphone", "choir"), ("synth lead",)),
        "hiphop": (0, ("bass",), ("electric piano", "vibraphone"), ("trumpet", "flute")),
        "folk": (None, ("upright bass",), ("banjo", "acoustic guitar", "harp"), ("fiddle",)),
        "classical": (
            None,
            ("cello",),
            ("harp", "piano", "strings"),
            ("flute", "violin", "clarinet"),
        ),
        "jazz": (32, ("upright bass",), ("vibraphone", "piano"), ("saxophone", "clarinet")),
        "pop": (0, ("bass",), ("piano", "synth pad"), ("flute", "synth lead")),
        "experimental": (None, ("synth bass", "cello"), ("choir", "vibraphone"), ("violin",)),
    },
    progressions={
        "rock": ((9, MINOR), (5, MAJOR), (0, MAJOR), (7, MAJOR)),
        "electronic": ((0, MIN7), (10, MAJOR), (8, MAJ7), (10, MAJOR)),
        "hiphop": ((0, MIN7), (10, MIN7), (8, MAJ7), (7, MINOR)),
        "folk": ((0, ADD9), (5, MAJOR), (7, SUS4), (0, MAJOR)),
        "classical": ((0, MINOR), (8, MAJOR), (3, MAJOR), (7, MAJOR)),
        "jazz": ((5, MAJ7), (4, MIN7), (9, DOM7), (2, MIN7)),
        "pop": ((5, MAJOR), (7, MAJOR), (0, MAJOR), (9, MINOR)),
        "experimental": ((0, (0, 6, 11)), (2, (0, 1, 7)), (7, (0, 6, 10)), (4, (0, 3, 4))),
    },
    grooves={
        "rock": {KICK: (0, 2, 8, 11), SNARE: (4, 12), RIDE: tuple(range(0, 16, 2))},
        "electronic": {KICK: (0, 4, 8, 12), OPEN_HAT: (2, 6, 10, 14), HAT: tuple(range(16))},
        "hiphop": {KICK: (0, 8, 9), SNARE: (4, 12), HAT: tuple(range(0, 16, 2))},
        "jazz": {RIDE: (0, 3, 4, 8, 11, 12), KICK: (0, 10)},
        "pop": {KICK: (0, 4, 8, 12), CLAP: (4, 12), HAT: (2, 6, 10, 14)},
    },
    tempo_scale=0.9,
    transpose=4,
    bass="pedal",
    comp="arpeggio",
    lead="long",
    velocity=0.8,
    mix=True,
)

CLUB = Scheme(
    name="club",
    band={
        "rock": (16, ("bass",), ("electric guitar", "distorted guitar"), ("organ", "synth lead")),
        "electronic": (25, ("synth bass",), ("electric piano", "organ"), ("synth lead", "flute")),
        "hiphop": (0, ("synth bass", "upright bass"), ("piano", "vibraphone"), ("strings",)),
        "folk": (None, ("bass",), ("acoustic guitar", "piano"), ("harmonica", "fiddle")),
        "classical": (None, ("cello", "upright bass"), ("piano", "strings"), ("violin", "flute")),
        "jazz": (32, ("upright bass",), ("electric guitar", "piano"), ("saxophone",)),
        "pop": (16, ("bass",), ("electric guitar", "piano", "synth pad"), ("vibraphone",)),
        "experimental": (25, ("synth bass",), ("synth pad", "harp"), ("synth lead", "trumpet")),
    },
    progressions={**BAND.progressions, "pop": ((9, MINOR), (5, MAJOR), (0, MAJOR), (7, MAJOR))},
    grooves={
        **BAND.grooves,
        "electronic": {KICK: (0, 4, 8, 12), CLAP: (4, 12), HAT: tuple(range(1, 16, 2))},
    },
    tempo_scale=1.15,
    transpose=2,
    comp="offbeat",
    mix=True,
)

PRETRAIN_SCHEMES = {s.name: s for s in (BAND, SESSION, STUDIO, CLUB)}
# Two of the General-MIDI soundfonts Debian ships (fluid-soundfont-gm,
# musescore-general-soundfont-small); a corpus clip names the one that played it.
PRETRAIN_SOUNDFONTS = {
    "fluidr3": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "musescore": Path("/usr/share/sounds/sf3/MuseScore_General.sf3"),
}
