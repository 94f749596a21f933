"""`clap-pipeline <command>`: every command of the project, one front door.

data (cli/data.py)     demo-data, tiny-model, stand-in-model, pretrain-stand-in, fetch-fma
train (cli/train.py)   train, evaluate, runs
search (cli/search.py) search, playlist, serve
ops (cli/ops.py)       mlflow-ui, run-health, stack

``python -m clap_pipeline.training`` (torchrun, the Pipes launcher) and
``python -m clap_pipeline.evaluation`` are aliases of ``train`` and ``evaluate``;
``python -m clap_pipeline.cli`` is this command. Each command imports its module lazily
so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace

from clap_pipeline.cli import data, ops, search, train
from clap_pipeline.config import ConfigError, Settings

# Commands with their own parser, built when they run (flags from TrainConfig/EvalConfig).
OWN_PARSERS: dict[str, Callable[[list[str]], int]] = {
    "train": train.train_main,
    "evaluate": train.evaluate_main,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clap-pipeline", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, train, search, ops):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in OWN_PARSERS:
        return OWN_PARSERS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "own_settings", False):  # reads (or needs) no Settings of its own
        return int(args.func(args) or 0)
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
