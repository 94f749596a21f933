"""`clap-pipeline train | evaluate | runs`: fine-tune, evaluate, compare the runs.

``train`` and ``evaluate`` take their flags from ``TrainConfig`` / ``Settings`` and
``EvalConfig``; their parsers are built when the command runs (``main`` dispatches to
``train_main`` / ``evaluate_main``), so the other commands do not import them.
``python -m clap_pipeline.training`` (what torchrun and the Pipes launcher start) and
``python -m clap_pipeline.evaluation`` are aliases of these two.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from clap_pipeline.cli.common import positive_int
from clap_pipeline.cli.knob_flags import add_knob_flags, knob_values
from clap_pipeline.config import ConfigError, Settings, add_setting_flags


def training_parser() -> argparse.ArgumentParser:
    from clap_pipeline.training.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="clap-pipeline train",
        description="Fine-tune CLAP on the prompts + waveforms under $CLAP_DATA_DIR "
        "(the `clap_model` asset without Dagster). Data-parallel under "
        "`torchrun --nproc_per_node N -m clap_pipeline.training ...`.",
    )
    add_knob_flags(parser, TrainConfig)
    add_setting_flags(parser)
    parser.add_argument(
        "--duckdb", help="DuckDB file with the tracks table (default the data dir's)"
    )
    parser.add_argument("--dagster-run-id", help="recorded on the MLflow run (set by Dagster)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def train_main(argv: list[str]) -> int:
    from clap_pipeline.training.command import run_training
    from clap_pipeline.training.config import TrainConfig, TrainInputs

    args = training_parser().parse_args(argv)

    def read_inputs() -> tuple[TrainConfig, TrainInputs]:
        """The env vars' settings with the command line's flags over them."""
        settings = Settings.from_args(args)
        config = TrainConfig(**knob_values(args, TrainConfig))
        inputs = TrainInputs.from_settings(settings)
        if args.duckdb:
            inputs = replace(inputs, duckdb_path=Path(args.duckdb))
        return config, inputs

    return run_training(read_inputs, dagster_run_id=args.dagster_run_id, quiet=args.quiet)


def evaluation_parser() -> argparse.ArgumentParser:
    from clap_pipeline.evaluation import evaluate
    from clap_pipeline.evaluation.inputs import EvalConfig

    parser = argparse.ArgumentParser(prog="clap-pipeline evaluate", description=evaluate.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="print reports/evaluation.json as a table")
    p.add_argument("--data-dir", default=None, help="default: $CLAP_DATA_DIR (or ./data)")
    p = sub.add_parser("run", help="evaluate now (what the `evaluation` asset does)")
    p.add_argument("--data-dir", default=None, help="default: $CLAP_DATA_DIR (or ./data)")
    add_knob_flags(p, EvalConfig)
    return parser


def evaluate_main(argv: list[str]) -> int:
    from clap_pipeline.evaluation.evaluate import evaluate
    from clap_pipeline.evaluation.inputs import EvalConfig, EvalInputs, EvaluationError, report_path
    from clap_pipeline.evaluation.render import format_evaluation_table
    from clap_pipeline.evaluation.report import load_report
    from clap_pipeline.selection import TracksError

    args = evaluation_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.data_dir is not None:
            settings = replace(settings, data_dir=Path(args.data_dir).expanduser().resolve())
        if args.command == "show":
            print(format_evaluation_table(load_report(report_path(settings))))
            return 0
        config = EvalConfig(**knob_values(args, EvalConfig))
        from transformers.utils import logging as hf_logging  # transformers loads lazily

        hf_logging.disable_progress_bar()  # per-checkpoint load bars are noise here
        report = evaluate(config, EvalInputs.from_settings(settings), log=print)
        print(format_evaluation_table(report))
        return 0
    except (EvaluationError, TracksError, ConfigError) as exc:
        print(f"evaluation {args.command}: error: {exc}", file=sys.stderr)
        return 2


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


def add_commands(sub: argparse._SubParsersAction) -> None:
    # Parsed by training_parser() / evaluation_parser() when they run (see main).
    sub.add_parser(
        "train", help="fine-tune CLAP (python -m clap_pipeline.training)", add_help=False
    )
    sub.add_parser(
        "evaluate", help="evaluate show|run (python -m clap_pipeline.evaluation)", add_help=False
    )
    p = sub.add_parser(
        "runs", help="compare the experiment's training runs (MLflow) and recommend max_epochs"
    )
    p.add_argument(
        "--recent",
        type=positive_int,
        default=5,  # comparison.DEFAULT_RECENT (that module loads DuckDB: imported lazily)
        help="latest finished runs whose median best epoch is recommended (default 5)",
    )
    p.add_argument(
        "--registered-model",
        help="registry model whose champion is marked (default: CLAP_REGISTERED_MODEL, clap-fma)",
    )
    p.set_defaults(func=_cmd_runs)
