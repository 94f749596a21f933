"""The project's settings: the one module that reads the documented env vars.

``Settings.from_env()`` is the whole configuration: the Dagster resource
(``clap_pipeline.defs.resources.ClapSettings``) carries one, and the CLIs build one and
override single fields with ``dataclasses.replace``. The process-wide switches that
libraries also read (``CLAP_FFMPEG``, ``HF_HUB_OFFLINE``) have their readers here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "laion/clap-htsat-unfused"
DEFAULT_MAX_TRACKS = 500
DEFAULT_EXPERIMENT = "clap-fma"
DEFAULT_REGISTERED_MODEL = "clap-fma"  # MLflow registered model of the fine-tuned versions
DEFAULT_RETRAIN_MIN_NEW_TRACKS = 1
DEFAULT_RETRAIN_MIN_FEEDBACK = 20
DEFAULT_RETRAIN_CRON = "0 3 * * *"  # nightly_retrain: 03:00 every day
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the env var to change."""


def default_tracking_uri(root: Path = REPO_ROOT) -> str:
    """SQLite store under ``mlruns/`` (MLflow >= 3.13 refuses the plain folder store)."""
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').as_posix()}"


def ffmpeg_override(environ: Mapping[str, str] | None = None) -> str | None:
    """``CLAP_FFMPEG``: an ffmpeg binary to use instead of searching PATH / imageio-ffmpeg."""
    value = (os.environ if environ is None else environ).get("CLAP_FFMPEG", "").strip()
    return value or None


def hf_hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it: set and not "0" means no downloads."""
    return (os.environ if environ is None else environ).get("HF_HUB_OFFLINE", "") not in ("", "0")


# Set by the launchers, not by users: torchrun's ranks for each process it starts, and the
# Pipes context of a process that a Dagster Pipes client started.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PIPES_CONTEXT_VARIABLE = "DAGSTER_PIPES_CONTEXT"
# Carried by the processes a Dagster run starts outside its own process tree (torchrun and
# its ranks each run in a session of their own), so that `defs/run_health` can find and
# stop them when the run is found dead.
LAUNCHED_BY_RUN_VARIABLE = "CLAP_DAGSTER_RUN_ID"


def torchrun_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun exports them; None when torchrun did not."""
    env = os.environ if environ is None else environ
    if not all(name in env for name in TORCHRUN_VARIABLES):
        return None
    try:
        rank, world_size, local_rank = (int(env[name]) for name in TORCHRUN_VARIABLES)
    except ValueError as exc:
        values = {name: env[name] for name in TORCHRUN_VARIABLES}
        raise ConfigError(f"malformed torchrun variables {values}: {exc}") from exc
    return rank, world_size, local_rank


def started_by_dagster_pipes(environ: Mapping[str, str] | None = None) -> bool:
    return bool((os.environ if environ is None else environ).get(PIPES_CONTEXT_VARIABLE))


def _is_cron(text: str) -> bool:
    # Five fields of the usual characters; Dagster's own parser checks the rest.
    fields = text.split()
    return len(fields) == 5 and all(re.fullmatch(r"[0-9A-Za-z*/,\-?]+", f) for f in fields)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    metadata_dir: Path
    audio_dir: Path
    model: str = DEFAULT_MODEL
    max_tracks: int = DEFAULT_MAX_TRACKS
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = DEFAULT_EXPERIMENT
    registered_model: str = DEFAULT_REGISTERED_MODEL
    # MLflow system metrics (CPU/GPU/memory) of training runs; MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    system_metrics: bool = True
    retrain_min_new_tracks: int = DEFAULT_RETRAIN_MIN_NEW_TRACKS
    retrain_min_feedback: int = DEFAULT_RETRAIN_MIN_FEEDBACK
    retrain_cron: str = DEFAULT_RETRAIN_CRON
    retrain_run_config: Path | None = None  # YAML run config of automated `retrain` runs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def get_int(name: str, default: int) -> int:
            raw = get(name) or str(default)
            try:
                return int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc

        data_dir = Path(get("CLAP_DATA_DIR") or "data")
        return cls.build(
            data_dir=data_dir,
            metadata_dir=get("FMA_METADATA_DIR"),
            audio_dir=get("FMA_AUDIO_DIR"),
            model=get("CLAP_MODEL") or DEFAULT_MODEL,
            max_tracks=get_int("CLAP_MAX_TRACKS", DEFAULT_MAX_TRACKS),
            mlflow_tracking_uri=get("MLFLOW_TRACKING_URI"),
            mlflow_experiment=get("CLAP_MLFLOW_EXPERIMENT") or DEFAULT_EXPERIMENT,
            registered_model=get("CLAP_REGISTERED_MODEL") or DEFAULT_REGISTERED_MODEL,
            system_metrics=(get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING") or "true").lower()
            not in ("false", "0"),
            retrain_min_new_tracks=get_int(
                "CLAP_RETRAIN_MIN_NEW_TRACKS", DEFAULT_RETRAIN_MIN_NEW_TRACKS
            ),
            retrain_min_feedback=get_int("CLAP_RETRAIN_MIN_FEEDBACK", DEFAULT_RETRAIN_MIN_FEEDBACK),
            retrain_cron=get("CLAP_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON,
            retrain_run_config=get("CLAP_RETRAIN_RUN_CONFIG"),
        )

    @classmethod
    def build(
        cls,
        data_dir: str | Path = "data",
        metadata_dir: str | Path | None = None,
        audio_dir: str | Path | None = None,
        model: str = DEFAULT_MODEL,
        max_tracks: int = DEFAULT_MAX_TRACKS,
        mlflow_tracking_uri: str | None = None,
        mlflow_experiment: str = DEFAULT_EXPERIMENT,
        registered_model: str = DEFAULT_REGISTERED_MODEL,
        system_metrics: bool = True,
        retrain_min_new_tracks: int = DEFAULT_RETRAIN_MIN_NEW_TRACKS,
        retrain_min_feedback: int = DEFAULT_RETRAIN_MIN_FEEDBACK,
        retrain_cron: str = DEFAULT_RETRAIN_CRON,
        retrain_run_config: str | Path | None = None,
    ) -> Settings:
        """Fill the derived defaults (metadata/audio under the data dir, SQLite MLflow store)."""
        if max_tracks < 1:
            raise ConfigError(f"CLAP_MAX_TRACKS must be >= 1, got {max_tracks}")
        if retrain_min_new_tracks < 1:
            raise ConfigError(
                f"CLAP_RETRAIN_MIN_NEW_TRACKS must be >= 1, got {retrain_min_new_tracks}"
            )
        if retrain_min_feedback < 1:
            raise ConfigError(f"CLAP_RETRAIN_MIN_FEEDBACK must be >= 1, got {retrain_min_feedback}")
        if not _is_cron(retrain_cron):
            raise ConfigError(
                f"CLAP_RETRAIN_CRON must be a cron expression with five fields such as "
                f"'0 3 * * *', got {retrain_cron!r}"
            )
        data = Path(data_dir).expanduser().resolve()
        return cls(
            data_dir=data,
            metadata_dir=Path(metadata_dir).expanduser().resolve()
            if metadata_dir
            else data / "fma_metadata",
            audio_dir=Path(audio_dir).expanduser().resolve() if audio_dir else data / "fma_audio",
            model=model,
            max_tracks=max_tracks,
            mlflow_tracking_uri=mlflow_tracking_uri or default_tracking_uri(),
            mlflow_experiment=mlflow_experiment,
            registered_model=registered_model,
            system_metrics=system_metrics,
            retrain_min_new_tracks=retrain_min_new_tracks,
            retrain_min_feedback=retrain_min_feedback,
            retrain_cron=retrain_cron,
            retrain_run_config=Path(retrain_run_config).expanduser().resolve()
            if retrain_run_config
            else None,
        )

    # Derived locations: every module asks here instead of joining paths itself.
    @property
    def tracks_csv(self) -> Path:
        return self.metadata_dir / "tracks.csv"

    @property
    def genres_csv(self) -> Path:
        return self.metadata_dir / "genres.csv"

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "clap.duckdb"

    @property
    def prompts_path(self) -> Path:
        return self.data_dir / "prompts.parquet"

    @property
    def waveforms_dir(self) -> Path:
        return self.data_dir / "waveforms"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def training_manifest_path(self) -> Path:
        """JSON written by the latest `clap_model` materialization (see training.py)."""
        return self.reports_dir / "training.json"

    @property
    def tiny_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-clap"


# --------------------------------------------------------------------------- `make stack`

STACK_MARKER_VARIABLE = "CLAP_STACK_HOME"  # carried by every process `make stack` starts


@dataclass(frozen=True)
class StackSettings:
    """`make stack` (clap_pipeline/stack.py): where its parts keep their data, their ports."""

    data_dir: Path
    host: str = "127.0.0.1"
    postgres_url: str | None = None  # CLAP_POSTGRES_URL: an existing server, none started
    postgres_port: int = 5433
    mlflow_port: int = 5050
    dagster_port: int = 3000
    code_server_port: int = 4266
    max_concurrent_runs: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def port(name: str, default: int) -> int:
            raw = get(name) or str(default)
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a port number, got {raw!r}") from exc
            if not 0 < value < 65536:
                raise ConfigError(f"{name} must be a port number (1-65535), got {value}")
            return value

        runs = get("CLAP_STACK_MAX_CONCURRENT_RUNS") or "4"
        if not runs.isdigit() or int(runs) < 1:
            raise ConfigError(f"CLAP_STACK_MAX_CONCURRENT_RUNS must be >= 1, got {runs!r}")
        url = get("CLAP_POSTGRES_URL")
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"CLAP_POSTGRES_URL must be a postgresql://user:password@host:port URL, got {url!r}"
            )
        return cls(
            data_dir=Path(get("CLAP_DATA_DIR") or "data").expanduser().resolve(),
            host=get("CLAP_STACK_HOST") or "127.0.0.1",
            postgres_url=url,
            postgres_port=port("CLAP_STACK_POSTGRES_PORT", 5433),
            mlflow_port=port("CLAP_STACK_MLFLOW_PORT", 5050),
            dagster_port=port("CLAP_STACK_DAGSTER_PORT", 3000),
            code_server_port=port("CLAP_STACK_CODE_SERVER_PORT", 4266),
            max_concurrent_runs=int(runs),
        )

    @property
    def stack_dir(self) -> Path:
        """Pid files, logs, the generated password and the state of the running stack."""
        return self.data_dir / "stack"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlflow-artifacts"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://{self.host}:{self.dagster_port}"
