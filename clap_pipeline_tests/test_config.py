"""The settings schema: each setting declared once in config.py, everything else derived."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clap_pipeline.config import (
    ConfigError,
    ServeSettings,
    Settings,
    StackSettings,
    add_setting_flags,
    setting_specs,
)
from clap_pipeline.defs.resources import ClapSettings

ROOT = Path(__file__).resolve().parent.parent


def test_env_values_are_parsed_by_type_and_derived_paths_filled(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "CLAP_DATA_DIR": str(tmp_path),
            "CLAP_MAX_TRACKS": "7",
            "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
            "CLAP_MODEL": "  ",  # blank counts as unset
        }
    )
    assert (s.max_tracks, s.system_metrics, s.model) == (7, False, "laion/clap-htsat-unfused")
    assert s.metadata_dir == tmp_path.resolve() / "fma_metadata"
    assert s.mlflow_tracking_uri.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLAP_MAX_TRACKS": "x"}, "CLAP_MAX_TRACKS must be an integer, got 'x'"),
        ({"CLAP_MAX_TRACKS": "0"}, "CLAP_MAX_TRACKS must be >= 1, got 0"),
        ({"CLAP_RETRAIN_MIN_FEEDBACK": "-2"}, "CLAP_RETRAIN_MIN_FEEDBACK must be >= 1, got -2"),
        ({"CLAP_RETRAIN_CRON": "daily"}, "CLAP_RETRAIN_CRON must be a cron expression"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_environment_hand_over_round_trips(tmp_path: Path) -> None:
    s = Settings.build(data_dir=tmp_path, max_tracks=3, system_metrics=False, registered_model="m")
    assert Settings.from_env(s.environment()) == s


def test_the_resource_has_every_setting_and_round_trips(tmp_path: Path) -> None:
    names = [name for name, _, _ in setting_specs(Settings)]
    assert list(ClapSettings.model_fields) == names
    assert "CLAP_MAX_TRACKS" in ClapSettings.model_fields["max_tracks"].description
    s = Settings.build(data_dir=tmp_path, retrain_run_config=tmp_path / "run.yaml")
    assert ClapSettings.from_settings(s).settings() == s


def test_flags_override_the_env_and_the_data_dir_moves_the_derived_paths(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path), "--experiment", "exp"])
    s = Settings.from_args(args, {"CLAP_DATA_DIR": "/elsewhere", "CLAP_MODEL": "m"})
    assert (s.data_dir, s.mlflow_experiment, s.model) == (tmp_path.resolve(), "exp", "m")
    assert s.audio_dir == tmp_path.resolve() / "fma_audio"


def test_every_setting_has_a_docs_row() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in docs.splitlines()
        if line.startswith("| `")
    }
    declared = {spec.env for cls in (Settings, ServeSettings) for _, _, spec in setting_specs(cls)}
    assert declared - rows == set()


def test_every_stack_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "stack.md").read_text()
    declared = {spec.env for _, _, spec in setting_specs(StackSettings)}
    assert declared and {env for env in declared if f"`{env}" not in docs} == set()
