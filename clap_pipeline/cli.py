"""`clap-pipeline` command line: data set-up, offline model, search and playlists.

Each command imports its module lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clap_pipeline.config import ConfigError, Settings


def _cmd_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.demo import write_demo_dataset

    out = Path(args.out) if args.out else settings.data_dir
    summary = write_demo_dataset(out, n_tracks=args.tracks, seed=args.seed)
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
    from clap_pipeline.model import save_tiny_model

    out = save_tiny_model(Path(args.out_dir), seed=args.seed)
    print(f"tiny CLAP saved to {out}; use it with CLAP_MODEL={out}")
    return 0


def _cmd_fetch_fma(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.fetch import fetch_fma

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
    from clap_pipeline.search import run_search_command

    return run_search_command(args, settings)


def _cmd_playlist(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.search import run_playlist_command

    return run_playlist_command(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clap-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write an FMA-format demo dataset (metadata + MP3s)")
    p.add_argument("--tracks", type=int, default=120, help="number of tracks (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output root (default $CLAP_DATA_DIR)")
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("tiny-model", help="save a tiny randomly initialised CLAP for offline use")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_model)

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
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("playlist", help="write an M3U playlist for a text query")
    p.add_argument("query")
    p.add_argument("-n", type=int, default=20, help="number of tracks")
    p.add_argument("--m3u", required=True, help="output .m3u path")
    p.add_argument("--model", default=None)
    p.set_defaults(func=_cmd_playlist)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings) or 0)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"clap-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
