"""`clap-pipeline` command line: data set-up, offline model, search, playlists, run comparison.

Each command imports its module lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from clap_pipeline.config import DEFAULT_MAX_TRACKS, ConfigError, Settings
from clap_pipeline.search.text_encoder import DEFAULT_ENCODER, ENCODER_KINDS


def _cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.demo.collection import add_demo_tracks, write_demo_dataset

    out = Path(args.out) if args.out else settings.data_dir
    if args.add:
        print(add_demo_tracks(out, args.add))
        return 0
    summary = write_demo_dataset(out, n_tracks=args.tracks, seed=args.seed, renderer=args.renderer)
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
    from clap_pipeline.training.model import save_tiny_model

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


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.search.query import run_search_command

    return run_search_command(args, settings)


def _cmd_playlist(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.search.query import run_playlist_command

    return run_playlist_command(args, settings)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    import torch

    from clap_pipeline.search.query import quiet_model_loading
    from clap_pipeline.search.service import SearchService
    from clap_pipeline.search.webapp import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_model_loading()
    # Queries run side by side, one torch thread each: intra-op threads on a busy
    # 2-core machine made one tiny-model query 16 ms at p50 and 260 ms at p95 instead of 5/10.
    torch.set_num_threads(args.threads)
    service = SearchService(
        settings,
        model_arg=args.model,
        poll_s=args.poll_s,
        text_encoder=args.text_encoder,
        encoder_threads=args.threads,
    )
    snap = service.load()
    print(
        f"serving {len(snap.catalog.track_ids)} tracks ({snap.index.kind} index) with "
        f"{snap.model.name} (text encoder {args.text_encoder}) on http://{args.host}:{args.port}",
        flush=True,
    )
    serve(service, args.host, args.port)
    return 0


def _cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from clap_pipeline.evaluation.comparison import (
        collect_runs,
        comparison_text,
        recommend_max_epochs,
    )

    uri, experiment = settings.mlflow_tracking_uri, settings.mlflow_experiment
    try:
        runs = collect_runs(uri, experiment, settings.registered_model)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(
            f"cannot read the MLflow store {uri} (MLFLOW_TRACKING_URI): {first_line}"
        ) from exc
    print(
        comparison_text(
            runs,
            recommend_max_epochs(runs, args.recent),
            experiment=experiment,
            tracking_uri=uri,
            model_name=settings.registered_model,
            retrain_run_config=settings.retrain_run_config,
        ),
        end="",
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clap-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
        "--add",
        type=int,
        metavar="N",
        help="append N new tracks (rows + clips in a new audio folder) to the demo dataset",
    )
    p.set_defaults(func=_cmd_demo_data)

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

    p = sub.add_parser("search", help="text-to-music search over the track embeddings")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument(
        "--model", default=None, help="model folder or models:/ URI (default: the champion)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--genre", help="only tracks with this genre (top genre or any of theirs)")
    p.add_argument("--year-min", type=int, help="released (else created) in or after this year")
    p.add_argument("--year-max", type=int, help="released (else created) in or before this year")
    p.add_argument(
        "--license",
        help="licence class (commercial-ok, derivatives-ok, commercial-derivatives-ok, "
        "public-domain) or an exact licence title",
    )
    p.add_argument("--max-duration", type=float, help="track duration at most this many seconds")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("playlist", help="write an M3U playlist for a text query")
    p.add_argument("query")
    p.add_argument("-n", type=int, default=20, help="number of tracks")
    p.add_argument("--m3u", required=True, help="output .m3u path")
    p.add_argument("--model", default=None)
    p.set_defaults(func=_cmd_playlist)

    p = sub.add_parser("serve", help="search service and web page (HTTP, FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--model",
        default=None,
        help="model folder or models:/ URI (default: the registry version that built the index)",
    )
    p.add_argument(
        "--poll-s",
        type=float,
        default=5.0,
        help="seconds between checks for a rebuilt index (0: never; default 5)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="threads per query embedding (default 1; queries run in parallel)",
    )
    p.add_argument(
        "--text-encoder",
        choices=ENCODER_KINDS,
        default=DEFAULT_ENCODER,
        help="query encoder: ONNX Runtime int8 (default) or fp32, exported from the served "
        "model at start and cached by its weights' hash; or the fp32 PyTorch model",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "runs", help="compare the experiment's training runs (MLflow) and recommend max_epochs"
    )
    p.add_argument(
        "--recent",
        type=_positive_int,
        default=5,  # comparison.DEFAULT_RECENT (that module loads DuckDB: imported lazily)
        help="latest finished runs whose median best epoch is recommended (default 5)",
    )
    p.add_argument(
        "--registered-model",
        help="registry model whose champion is marked (default: CLAP_REGISTERED_MODEL, clap-fma)",
    )
    p.set_defaults(func=_cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if getattr(args, "registered_model", None):
            settings = replace(settings, registered_model=args.registered_model)
        return int(args.func(args, settings) or 0)
    except (ConfigError, ValueError, RuntimeError) as exc:
        print(f"clap-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command reads or writes: one line, never a traceback
        print(f"clap-pipeline {args.command}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2


def os_error_text(exc: OSError) -> str:
    """``<file>: <reason>`` (``[Errno 21] Is a directory: 'x'`` reads worse)."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{names}: {exc.strerror}"


if __name__ == "__main__":
    sys.exit(main())
