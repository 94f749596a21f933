"""`clap-pipeline demo-data | tiny-model | stand-in-model | pretrain-stand-in | fetch-fma`: data and offline models."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from clap_pipeline.config import DEFAULT_MAX_TRACKS, Settings
from clap_pipeline.demo.synth import CLIP_SECONDS


def _cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.demo.collection import add_demo_tracks, write_demo_dataset

    out = Path(args.out) if args.out else settings.data_dir
    if args.add:
        print(add_demo_tracks(out, args.add))
        return 0
    summary = write_demo_dataset(
        out, n_tracks=args.tracks, seed=args.seed, renderer=args.renderer,
        clip_seconds=args.seconds, sectioned=args.sections,
    )  # fmt: skip
    print(summary)
    elsewhere = [
        f"{name}={configured}"
        for name, configured, written in (
            ("FMA_METADATA_DIR", settings.metadata_dir, summary.tracks_csv.parent),
            ("FMA_AUDIO_DIR", settings.audio_dir, summary.audio_dir),
        )
        if Path(configured).resolve() != written.resolve()
    ]
    if elsewhere:
        print(
            f"note: the pipeline is configured to read {', '.join(elsewhere)}; to use this "
            f"dataset, set CLAP_DATA_DIR={out} and leave FMA_METADATA_DIR/FMA_AUDIO_DIR unset",
            file=sys.stderr,
        )
    return 0


def _cmd_tiny_model(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.model.tiny import save_tiny_model

    out = save_tiny_model(Path(args.out_dir), seed=args.seed)
    print(f"tiny CLAP saved to {out}; use it with CLAP_MODEL={out}")
    return 0


def _cmd_stand_in_model(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.training.stand_in import save_stand_in

    out = save_stand_in(Path(args.out_dir), size=args.size, seed=args.seed)
    print(
        f"{args.size} stand-in CLAP (random weights) saved to {out}; use it with CLAP_MODEL={out}"
    )
    return 0


def _cmd_pretrain_stand_in(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.demo.pretrain import PretrainRecipe, pretrain_stand_in

    given = {"clips": args.clips, "epochs": args.epochs}
    recipe = replace(PretrainRecipe(), **{k: v for k, v in given.items() if v is not None})
    out = pretrain_stand_in(Path(args.out_dir), recipe)
    print(f"use it with CLAP_MODEL={out}")
    return 0


def _cmd_fetch_fma(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.metadata.fetch import fetch_fma

    summary = fetch_fma(
        subset=args.subset,
        limit=args.limit,
        metadata_dir=settings.metadata_dir,
        audio_dir=settings.audio_dir,
        base_url=args.base_url,
        download_dir=Path(args.download_dir)
        if args.download_dir
        else settings.data_dir / "downloads",
    )
    print(summary)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_demo_data(sub)
    _add_model_commands(sub)
    _add_fetch_fma(sub)


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write an FMA-format demo dataset (metadata + MP3s)")
    p.add_argument(
        "--tracks",
        type=int,
        default=DEFAULT_MAX_TRACKS,
        help=f"number of tracks (default {DEFAULT_MAX_TRACKS}, CLAP_MAX_TRACKS' default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output root (default $CLAP_DATA_DIR)")
    p.add_argument(
        "--renderer",
        choices=("synth", "fluidsynth"),
        default="synth",
        help="synth: synthesised timbres (default); fluidsynth: General-MIDI arrangements "
        "played from real instrument samples (needs Debian's fluidsynth and "
        "fluid-soundfont-gm); the instruments played are named in each track's tags",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=CLIP_SECONDS,
        help=f"clip length (default {CLIP_SECONDS:g} s: two 5-s windows; FMA's clips are 30 s, "
        "six windows)",
    )
    p.add_argument(
        "--sections",
        action="store_true",
        help="each clip plays its genre up to the window boundary nearest its middle, then "
        "another genre; fma_metadata/sections.csv says which plays where (the evaluation "
        "measures moment accuracy on it)",
    )
    p.add_argument(
        "--add",
        type=int,
        metavar="N",
        help="append N new tracks (rows + clips in a new audio folder) to the demo dataset",
    )
    p.set_defaults(func=_cmd_demo_data)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="save a tiny randomly initialised CLAP for offline use")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_model)

    p = sub.add_parser(
        "stand-in-model",
        help="save a randomly initialised CLAP offline: tiny, or laion/clap-htsat-unfused's size",
    )
    p.add_argument("out_dir", nargs="?", default="data/models/stand-in-full")
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_stand_in_model)

    p = sub.add_parser(
        "pretrain-stand-in",
        help="pre-train the tiny CLAP once on music rendered by FluidSynth, captioned from "
        "its arrangements (a stand-in for LAION's pre-training; docs/stand-in.md)",
    )
    p.add_argument("out_dir", nargs="?", default="data/models/pretrained-stand-in")
    p.add_argument("--clips", type=int, help="corpus size (default: the recipe's)")
    p.add_argument("--epochs", type=int, help="pre-training epochs (default: the recipe's)")
    p.set_defaults(func=_cmd_pretrain_stand_in)


def _add_fetch_fma(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-fma", help="download FMA metadata and a subset of clips")
    p.add_argument("--subset", choices=["small", "medium", "large"], default="small")
    p.add_argument(
        "--limit", type=int, default=None, help="extract only the first N clips by track_id"
    )
    p.add_argument("--base-url", default="https://os.unil.cloud.switch.ch/fma/")
    p.add_argument(
        "--download-dir",
        default=None,
        help="where zips are kept (default $CLAP_DATA_DIR/downloads)",
    )
    p.set_defaults(func=_cmd_fetch_fma)
