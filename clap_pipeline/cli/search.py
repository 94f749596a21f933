"""`clap-pipeline search | playlist | serve`: text-to-music search in a terminal or over HTTP."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clap_pipeline.cli.knob_flags import add_knob_flags, knob_values
from clap_pipeline.config import ServeSettings, Settings
from clap_pipeline.search.options import QueryOptions, ServeOptions

if TYPE_CHECKING:
    import numpy as np


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

    options = ServeOptions(**knob_values(args, ServeOptions))  # bounds checked here
    serve_settings = ServeSettings.from_env()
    check_listen(options.host, serve_settings.token)  # before the (slow) model load
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_model_loading()
    # Queries run side by side, one torch thread each: intra-op threads on a busy
    # 2-core machine made one tiny-model query 16 ms at p50 and 260 ms at p95 instead of 5/10.
    torch.set_num_threads(options.threads)
    service = SearchService(
        settings,
        model_arg=options.model,
        poll_s=options.poll_s,
        text_encoder=options.text_encoder,
        encoder_threads=options.threads,
        decode_upload=upload_decoder(serve_settings),
        feedback_queue=serve_settings.feedback_queue,
    )
    searcher = service.load()
    print(
        f"serving {len(searcher.index)} tracks ({searcher.index.vectors.kind} index) with "
        f"{searcher.encoder.model.name} (text encoder {options.text_encoder}) on "
        f"http://{options.host}:{options.port}",
        flush=True,
    )
    serve(service, options.host, options.port, serve_settings)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="text-to-music search over the track embeddings")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10, help="number of results")
    add_knob_flags(p, QueryOptions)
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
    add_knob_flags(p, QueryOptions)
    p.set_defaults(func=_cmd_playlist)

    p = sub.add_parser("serve", help="search service and web page (HTTP, FastAPI + uvicorn)")
    add_knob_flags(p, ServeOptions)
    p.set_defaults(func=_cmd_serve)
