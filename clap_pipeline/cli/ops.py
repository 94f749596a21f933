"""`clap-pipeline mlflow-ui | run-health | stack`: the MLflow UI, dead Dagster runs, the stack."""

from __future__ import annotations

import argparse
import sys

from clap_pipeline.config import Settings


def _cmd_mlflow_ui(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from clap_pipeline.tracking import serve_ui

    return serve_ui(args.host, args.port, dry_run=args.dry_run)


def _cmd_run_health(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from dagster import DagsterInstance

    from clap_pipeline.defs.run_health import free_dead_runs, free_run, slot_holders_text

    with DagsterInstance.get() as instance:
        if args.health_command == "free":
            try:
                print(free_run(instance, args.run_id))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            return 0
        for line in free_dead_runs(instance, args.pools):
            print(line)
        for pool in args.pools:
            print(slot_holders_text(instance, pool))
    return 0


def _cmd_stack(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from clap_pipeline.stack import stack_command

    return stack_command(args.stack_command)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mlflow-ui", help="serve the project's MLflow store (mlflow server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--dry-run", action="store_true", help="print the command, do not start it")
    p.set_defaults(func=_cmd_mlflow_ui, own_settings=True)

    p = sub.add_parser(
        "run-health",
        help="runs of the Dagster instance ($DAGSTER_HOME) that died, and their pool slots",
    )
    health = p.add_subparsers(dest="health_command", required=True)
    c = health.add_parser("check", help="mark dead runs FAILED and free their slots in POOL(s)")
    c.add_argument("pools", nargs="*", default=["gpu"])
    c = health.add_parser(
        "free", help="mark RUN_ID FAILED and free its slots (a dead run elsewhere)"
    )
    c.add_argument("run_id")
    p.set_defaults(func=_cmd_run_health, own_settings=True)

    p = sub.add_parser("stack", help="Dagster and MLflow on PostgreSQL, as a team runs them")
    p.add_argument("stack_command", choices=["up", "down", "status", "env"])
    p.set_defaults(func=_cmd_stack, own_settings=True)
