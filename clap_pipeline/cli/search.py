"""`clap-pipeline search | playlist | serve`: text-to-music search in a terminal or over HTTP."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clap_pipeline.cli.common import positive_int
from clap_pipeline.config import ServeSettings, Settings
from clap_pipeline.search.filters import DEFAULT_MODE, MODES
from clap_pipeline.search.text_encoder import DEFAULT_ENCODER, ENCODER_KINDS

if TYPE_CHECKING:
    import numpy as np

MODE_HELP = (
    "hybrid (default): the audio ranking fused with BM25 over titles, artists, albums, "
    "genres and tags; audio: the audio embedding alone; text: the names alone"
)


def quiet_model_loading() -> None:
    """One query: transformers' per-load progress bars are noise in a terminal command."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.search.engine import search
    from clap_pipeline.search.filters import Filters
    from clap_pipeline.search.results import format_table, results_json

    quiet_model_loading()
    filters = Filters(
        genre=args.genre,
        year_min=args.year_min,
        year_max=args.year_max,
        license=args.license,
        max_duration=args.max_duration,
    )
    hits = search(settings, args.query, args.k, args.model, filters, args.mode)
    if not hits and not args.json:
        print("no indexed track passes the filters", file=sys.stderr)
    print(results_json(hits) if args.json else format_table(hits))
    return 0


def _cmd_playlist(args: argparse.Namespace, settings: Settings) -> int:
    from clap_pipeline.search.engine import search
    from clap_pipeline.search.results import m3u_target, write_m3u

    m3u_target(args.m3u)  # before the search: a wrong target fails at once
    quiet_model_loading()
    hits = search(settings, args.query, args.n, args.model, mode=args.mode)
    out = write_m3u(args.m3u, hits)
    print(f"wrote {len(hits)} tracks to {out}", file=sys.stderr)
    return 0


def upload_decoder(serve: ServeSettings) -> Callable[[Path], np.ndarray]:
    """The audio stage's decoder of uploaded queries, its rejections as the service's."""
    from clap_pipeline.audio.upload import UploadRejected, decode_upload
    from clap_pipeline.search.service import AudioQueryError
    from clap_pipeline.windows import WindowRule

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_upload(
                path,
                rule=WindowRule(),
                timeout_s=serve.upload_timeout_s,
                max_s=serve.max_upload_s,
            )
        except UploadRejected as exc:
            raise AudioQueryError(exc.reason, str(exc)) from None

    return decode


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    import torch

    from clap_pipeline.search.service import SearchService
    from clap_pipeline.search.webapp import serve
    from clap_pipeline.search.write_guard import check_listen

    serve_settings = ServeSettings.from_env()
    check_listen(args.host, serve_settings.token)  # before the (slow) model load
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
        decode_upload=upload_decoder(serve_settings),
        feedback_queue=serve_settings.feedback_queue,
    )
    searcher = service.load()
    print(
        f"serving {len(searcher.index)} tracks ({searcher.index.vectors.kind} index) with "
        f"{searcher.encoder.model.name} (text encoder {args.text_encoder}) on "
        f"http://{args.host}:{args.port}",
        flush=True,
    )
    serve(service, args.host, args.port, serve_settings)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("playlist", help="write an M3U playlist for a text query")
    p.add_argument("query")
    p.add_argument("-n", type=int, default=20, help="number of tracks")
    p.add_argument("--m3u", required=True, help="output .m3u path")
    p.add_argument("--model", default=None)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
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
        type=positive_int,
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
