"""The project's settings: the one module that reads the documented env vars.

``Settings.from_env()`` is the whole configuration: the Dagster resource
(``clap_pipeline.defs.resources.ClapSettings``) carries one, and the CLIs build one and
override single fields with ``dataclasses.replace``. The process-wide switches that
libraries also read (``CLAP_FFMPEG``, ``HF_HUB_OFFLINE``) have their readers here too.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "laion/clap-htsat-unfused"
DEFAULT_MAX_TRACKS = 500
DEFAULT_EXPERIMENT = "clap-fma"
DEFAULT_REGISTERED_MODEL = "clap-fma"  # MLflow registered model of the fine-tuned versions
DEFAULT_RETRAIN_MIN_NEW_TRACKS = 1
DEFAULT_RETRAIN_MIN_FEEDBACK = 20
DEFAULT_RETRAIN_CRON = "0 3 * * *"  # nightly_retrain: 03:00 every day
CAPTION_MODES = ("mixed", "captions", "templates")  # how CLAP_CAPTIONS is used (captions.py)
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


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class SettingSpec:
    """One setting's declaration: its env variable, value type, help and rule."""

    env: str
    kind: type  # str, int, float, bool or Path
    help: str
    flag: str | None = None  # command-line flag, where a CLI offers one
    rule: tuple[Callable[[Any], bool], str] | None = None  # (valid?, what it must be)


def spec(
    env: str,
    kind: type,
    help: str,
    *,
    flag: str | None = None,
    rule: tuple[Callable[[Any], bool], str] | None = None,
) -> dict[str, SettingSpec]:
    """A settings field's metadata: ``field(default=..., metadata=spec(env, type, help))``."""
    return {"setting": SettingSpec(env, kind, help, flag, rule)}


def setting_specs(cls: type) -> list[tuple[str, Any, SettingSpec]]:
    """(field name, default, spec) of every declared setting of ``cls``, in order."""
    return [
        (f.name, f.default, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata
    ]


def _parse(raw: str, spec: SettingSpec) -> Any:
    if spec.kind is bool:
        return raw.lower() not in ("false", "0", "no", "off")
    if spec.kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{spec.env} must be an integer, got {raw!r}") from exc
    if spec.kind is float:
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"{spec.env} must be a number, got {raw!r}") from exc
    return spec.kind(raw)


def values_from_env(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of ``cls`` that the environment sets (an empty value counts as unset)."""
    env = os.environ if environ is None else environ
    values = {}
    for name, _, spec in setting_specs(cls):
        raw = env.get(spec.env, "").strip()
        if raw:
            values[name] = _parse(raw, spec)
    return values


def check_rules(obj: Any) -> None:
    """Raise ConfigError naming the env variable of the first setting that breaks its rule."""
    for name, _, spec in setting_specs(type(obj)):
        value = getattr(obj, name)
        if spec.rule is not None and value is not None and not spec.rule[0](value):
            raise ConfigError(f"{spec.env} must be {spec.rule[1]}, got {value!r}")


def add_setting_flags(parser: argparse.ArgumentParser, cls: type | None = None) -> None:
    """A flag for each setting that declares one; unset flags leave the env var's value."""
    for name, _, spec in setting_specs(cls or Settings):
        if spec.flag:
            kind = str if spec.kind is Path else spec.kind
            parser.add_argument(
                spec.flag, dest=name, type=kind, help=f"{spec.help} (default ${spec.env})"
            )


def _at_least_one(value: int) -> bool:
    return value >= 1


@dataclass(frozen=True)
class Settings:
    """The project's settings. Paths are resolved; the derived defaults filled on creation."""

    data_dir: Path = field(
        default=Path("data"),
        metadata=spec("CLAP_DATA_DIR", Path, "root of inputs and outputs", flag="--data-dir"),
    )
    metadata_dir: Path = field(
        default=None,
        metadata=spec(
            "FMA_METADATA_DIR",
            Path,
            "holds FMA's `tracks.csv` and `genres.csv` (default `$CLAP_DATA_DIR/fma_metadata`)",
        ),
    )
    audio_dir: Path = field(
        default=None,
        metadata=spec(
            "FMA_AUDIO_DIR",
            Path,
            "clips in FMA's layout `NNN/NNNNNN.mp3` (default `$CLAP_DATA_DIR/fma_audio`)",
        ),
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=spec(
            "CLAP_MODEL",
            str,
            "hub id or local `save_pretrained` folder to fine-tune",
            flag="--model",
        ),
    )
    captions: Path | None = field(
        default=None,
        metadata=spec(
            "CLAP_CAPTIONS",
            Path,
            "Parquet or CSV file of captions (columns `track_id`, `caption`; several rows per "
            "track allowed) that `prompts` uses beside or instead of the templates",
        ),
    )
    captions_mode: str = field(
        default="mixed",
        metadata=spec(
            "CLAP_CAPTIONS_MODE",
            str,
            "mixed: captions join the templates training draws from each epoch | captions: a "
            "track with captions is described by them alone | templates: the file is ignored",
            rule=(lambda mode: mode in CAPTION_MODES, f"one of {CAPTION_MODES}"),
        ),
    )
    max_tracks: int = field(
        default=DEFAULT_MAX_TRACKS,
        metadata=spec(
            "CLAP_MAX_TRACKS",
            int,
            "experiment size: the first N tracks by id whose audio exists",
            rule=(_at_least_one, ">= 1"),
        ),
    )
    mlflow_tracking_uri: str = field(
        default=None,
        metadata=spec(
            "MLFLOW_TRACKING_URI",
            str,
            "MLflow store (default `sqlite:///<repo>/mlruns/mlflow.db`, artifacts under "
            "`mlruns/artifacts`), or a tracking server's `http://` URL",
            flag="--tracking-uri",
        ),
    )
    mlflow_experiment: str = field(
        default=DEFAULT_EXPERIMENT,
        metadata=spec(
            "CLAP_MLFLOW_EXPERIMENT",
            str,
            "MLflow experiment name",
            flag="--experiment",
        ),
    )
    registered_model: str = field(
        default=DEFAULT_REGISTERED_MODEL,
        metadata=spec(
            "CLAP_REGISTERED_MODEL",
            str,
            "MLflow registered model of the fine-tuned versions (training registers, search "
            "and the service serve its `champion`)",
            flag="--registered-model",
        ),
    )
    system_metrics: bool = field(
        default=True,
        metadata=spec(
            "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
            bool,
            "`false` turns off CPU/GPU/memory metrics of training runs",
        ),
    )
    retrain_min_new_tracks: int = field(
        default=DEFAULT_RETRAIN_MIN_NEW_TRACKS,
        metadata=spec(
            "CLAP_RETRAIN_MIN_NEW_TRACKS",
            int,
            "`new_tracks_sensor` retrains once this many selected tracks were not in the last "
            "training",
            rule=(_at_least_one, ">= 1"),
        ),
    )
    retrain_min_feedback: int = field(
        default=DEFAULT_RETRAIN_MIN_FEEDBACK,
        metadata=spec(
            "CLAP_RETRAIN_MIN_FEEDBACK",
            int,
            "`feedback_sensor` retrains once this many rows arrived in `search_feedback` since "
            "its last request",
            rule=(_at_least_one, ">= 1"),
        ),
    )
    retrain_cron: str = field(
        default=DEFAULT_RETRAIN_CRON,
        metadata=spec(
            "CLAP_RETRAIN_CRON",
            str,
            "cron of the `nightly_retrain` schedule (stopped by default)",
            rule=(_is_cron, "a cron expression with five fields such as '0 3 * * *'"),
        ),
    )
    retrain_run_config: Path | None = field(
        default=None,
        metadata=spec(
            "CLAP_RETRAIN_RUN_CONFIG",
            Path,
            "YAML run config of automated `retrain` runs, e.g. `ops: {clap_model: {config: "
            "{max_epochs: 4}}}`",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self)

        def resolved(value: str | Path) -> Path:
            return Path(value).expanduser().resolve()

        data = resolved(self.data_dir)
        derived = {
            "data_dir": data,
            "metadata_dir": resolved(self.metadata_dir)
            if self.metadata_dir
            else data / "fma_metadata",
            "audio_dir": resolved(self.audio_dir) if self.audio_dir else data / "fma_audio",
            "mlflow_tracking_uri": self.mlflow_tracking_uri or default_tracking_uri(),
            "retrain_run_config": resolved(self.retrain_run_config)
            if self.retrain_run_config
            else None,
            "captions": resolved(self.captions) if self.captions else None,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: filled once, here

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(**values_from_env(cls, environ))

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """Settings from keyword values (paths as str or Path; None: the default)."""
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """The env vars' settings with the flags of ``add_setting_flags`` that were given."""
        given = {
            name: getattr(args, name)
            for name, _, spec in setting_specs(cls)
            if spec.flag and getattr(args, name, None) is not None
        }
        return cls(**{**values_from_env(cls, environ), **given})

    def environment(self) -> dict[str, str]:
        """The env variables that make ``from_env`` give these settings (child processes)."""
        out = {}
        for name, _, spec in setting_specs(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[spec.env] = str(value).lower() if spec.kind is bool else str(value)
        return out

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
    def window_embeddings_dir(self) -> Path:
        """Every window embedded once per model (window_embeddings.py), a folder per model."""
        return self.data_dir / "window_embeddings"

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


def _is_port(value: int) -> bool:
    return 0 < value < 65536


def _is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def _port(env: str, default: int, what: str) -> Any:
    return field(
        default=default, metadata=spec(env, int, what, rule=(_is_port, "a port number (1-65535)"))
    )


@dataclass(frozen=True)
class StackSettings:
    """`make stack` (clap_pipeline/stack.py): where its parts keep their data, their ports.

    Declared as ``Settings`` is (one field per setting); the data folder is ``Settings``'
    ``CLAP_DATA_DIR``.
    """

    data_dir: Path
    host: str = field(
        default="127.0.0.1",
        metadata=spec("CLAP_STACK_HOST", str, "address every part of the stack listens on"),
    )
    postgres_url: str | None = field(
        default=None,
        metadata=spec(
            "CLAP_POSTGRES_URL",
            str,
            "an existing PostgreSQL server to use instead of starting one",
            rule=(_is_postgres_url, "a postgresql://user:password@host:port URL"),
        ),
    )
    postgres_port: int = _port("CLAP_STACK_POSTGRES_PORT", 5433, "port of the stack's PostgreSQL")
    mlflow_port: int = _port("CLAP_STACK_MLFLOW_PORT", 5050, "port of the MLflow tracking server")
    dagster_port: int = _port("CLAP_STACK_DAGSTER_PORT", 3000, "port of the Dagster webserver")
    code_server_port: int = _port(
        "CLAP_STACK_CODE_SERVER_PORT", 4266, "port of the Dagster code location server"
    )
    max_concurrent_runs: int = field(
        default=4,
        metadata=spec(
            "CLAP_STACK_MAX_CONCURRENT_RUNS",
            int,
            "runs the stack's queue lets run at once",
            rule=(_at_least_one, ">= 1"),
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackSettings:
        data_dir = Settings.from_env(environ).data_dir
        return cls(data_dir=data_dir, **values_from_env(cls, environ))

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


MIN_TOKEN_CHARS = 16
FEEDBACK_QUEUE = 1000  # feedback posts that may wait for the service's writer


def _positive(value: float) -> bool:
    return value > 0


@dataclass(frozen=True)
class ServeSettings:
    """`clap-pipeline serve` (search/service.py, search/webapp.py): who may write feedback,
    how often, and what an uploaded audio query may be. Declared as ``Settings`` is."""

    token: str | None = field(
        default=None,
        metadata=spec(
            "CLAP_SERVE_TOKEN",
            str,
            "bearer token `POST /api/feedback` needs (`Authorization: Bearer <token>`); "
            "required to listen beyond loopback; at least 16 characters",
        ),
    )
    feedback_per_minute: int = field(
        default=30,
        metadata=spec(
            "CLAP_FEEDBACK_PER_MINUTE",
            int,
            "feedback posts one client (address) may make per minute; more get 429",
            rule=(_at_least_one, ">= 1"),
        ),
    )
    feedback_queue: int = field(
        default=FEEDBACK_QUEUE,
        metadata=spec(
            "CLAP_FEEDBACK_QUEUE",
            int,
            "feedback posts that may wait for the service's one writer; more get 503 "
            "with Retry-After",
            rule=(_at_least_one, ">= 1"),
        ),
    )
    max_upload_mb: float = field(
        default=20.0,
        metadata=spec(
            "CLAP_MAX_UPLOAD_MB",
            float,
            "largest audio file `POST /api/search/audio` takes, in MB; larger get 413",
            rule=(_positive, "> 0"),
        ),
    )
    max_upload_s: float = field(
        default=600.0,
        metadata=spec(
            "CLAP_MAX_UPLOAD_S",
            float,
            "longest audio (declared or decoded) an uploaded query may be, in seconds",
            rule=(_positive, "> 0"),
        ),
    )
    upload_timeout_s: float = field(
        default=10.0,
        metadata=spec(
            "CLAP_UPLOAD_TIMEOUT_S",
            float,
            "time limit for decoding an uploaded query, in seconds",
            rule=(_positive, "> 0"),
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self)
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            # Not echoed: it is a secret.
            raise ConfigError(
                f"CLAP_SERVE_TOKEN must be at least {MIN_TOKEN_CHARS} characters, got "
                f"{len(self.token)} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        return cls(**values_from_env(cls, environ))

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * 1_000_000)

    def __repr__(self) -> str:  # never print the token
        shown = "set" if self.token else None
        return (
            f"ServeSettings(token={shown}, feedback_per_minute={self.feedback_per_minute}, "
            f"feedback_queue={self.feedback_queue}, "
            f"max_upload_mb={self.max_upload_mb}, max_upload_s={self.max_upload_s}, "
            f"upload_timeout_s={self.upload_timeout_s})"
        )
