"""`clap-pipeline <command>`: one command line for every command; `python -m` aliases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clap_pipeline.cli import build_parser, main

COMMANDS = {
    "demo-data", "tiny-model", "stand-in-model", "pretrain-stand-in", "fetch-fma",
    "train", "evaluate", "runs", "embed-windows",
    "search", "playlist", "serve",
    "mlflow-ui", "run-health", "stack",
}  # fmt: skip


def test_every_command_is_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert all(command in usage for command in COMMANDS)


def test_train_and_evaluate_parse_their_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--max-epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "run", "--help"])
    assert "--n-bootstrap" in capsys.readouterr().out


def test_mlflow_ui_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["mlflow-ui", "--port", "5123", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MLflow UI on http://127.0.0.1:5123" in out and "--backend-store-uri" in out


def test_python_m_training_is_an_alias_of_train() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "clap_pipeline.training", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout.startswith("usage: clap-pipeline train")
