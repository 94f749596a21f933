"""MLflow: experiment set-up, run links, metric history, the `clap-fma` registry and its aliases.

The store is SQLite under ``mlruns/`` (MLflow >= 3.13 refuses the plain folder
store and the registry needs a database). Experiments get an explicit artifact
location next to the database so it does not depend on the working directory.

Registry convention: each `clap_model` materialization registers its best
checkpoint as a version of ``clap-fma``. Alias ``champion`` = the best model so
far on the validation set; ``challenger`` = the latest version that did not beat it.

``clap-pipeline mlflow-ui --host 127.0.0.1 --port 5000`` serves the
project's store (``make mlflow-ui``).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clap_pipeline import run_names
from clap_pipeline.config import ConfigError, Settings
from clap_pipeline.processes import ProcessRef

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves


class ChampionNotFoundError(RuntimeError):
    """No `champion` version is registered yet (the `clap_model` asset has not run)."""


@dataclass(frozen=True)
class ChampionModel:
    local_dir: Path  # a save_pretrained folder: model + processor
    version: str
    run_id: str


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :])


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """``<dir of mlflow.db>/artifacts/<experiment>`` for SQLite stores; None lets a server decide."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "default"
    return str(db.parent / "artifacts" / slug)


def client(tracking_uri: str):
    from mlflow import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def configure(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    mlflow_client = client(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        location = artifact_location_for(tracking_uri, experiment)
        if location:
            Path(location).mkdir(parents=True, exist_ok=True)
        return mlflow_client.create_experiment(experiment, artifact_location=location)
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return found.experiment_id


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    """Link to the run in the MLflow UI (the server itself, or `make mlflow-ui`'s address)."""
    base = ui_url or (tracking_uri if tracking_uri.startswith("http") else DEFAULT_UI_URL)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged (step, value) of a metric, sorted by step (search_runs keeps only the last)."""
    history = client(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


# --------------------------------------------------------------------------- abandoned runs

TAG_TRAINER_PID = "clap.trainer_pid"
TAG_TRAINER_HOST = "clap.trainer_host"
TAG_TRAINER_STARTED = "clap.trainer_started_at"
TAG_KILLED_NOTE = "clap.killed"


def close_abandoned_runs(mlflow_client, experiment_id: str, current_run_id: str) -> list[str]:
    """Record this process as ``current_run_id``'s trainer; mark abandoned RUNNING runs KILLED.

    A run is abandoned when the process that trained it is gone (``kill -9``, OOM kill,
    reboot: nothing could end the run) or unknown (a run from before trainers were
    recorded). Runs trained on another host are left alone. Each killed run gets a
    ``clap.killed`` tag saying why. Returns their ids.
    """
    from mlflow.entities import ViewType

    me = ProcessRef.current()
    for key, value in (
        (TAG_TRAINER_PID, str(me.pid)),
        (TAG_TRAINER_HOST, me.host),
        (TAG_TRAINER_STARTED, f"{me.seen_at:.3f}"),
    ):
        mlflow_client.set_tag(current_run_id, key, value)
    killed: list[str] = []
    for run in mlflow_client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING'", run_view_type=ViewType.ACTIVE_ONLY
    ):
        run_id, tags = run.info.run_id, run.data.tags
        if run_id == current_run_id:
            continue
        if TAG_TRAINER_PID in tags:
            trainer = ProcessRef(
                int(tags[TAG_TRAINER_PID]),
                float(tags.get(TAG_TRAINER_STARTED, 0)),
                tags.get(TAG_TRAINER_HOST, ""),
            )
            if trainer.is_alive() is not False:
                continue  # still training, or on another host
            why = f"its trainer (pid {trainer.pid} on {trainer.host}) no longer exists"
        else:
            why = "no trainer process was recorded for it"
        note = (
            f"abandoned: still RUNNING when run {current_run_id} started, but {why} "
            "(killed, e.g. kill -9, OOM kill or reboot); marked KILLED"
        )
        mlflow_client.set_tag(run_id, TAG_KILLED_NOTE, note)
        if "mlflow.note.content" not in tags:  # the run's description in the MLflow UI
            mlflow_client.set_tag(run_id, "mlflow.note.content", note)
        mlflow_client.set_terminated(run_id, status="KILLED")
        killed.append(run_id)
    return killed


# --------------------------------------------------------------------------- registry


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc)


def alias_version(mlflow_client, name: str, alias: str):
    """The ModelVersion behind ``name@alias``, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def register_checkpoint(
    mlflow_client,
    name: str,
    *,
    run_id: str,
    source: str,
    tags: Mapping[str, str],
) -> str:
    """Register ``source`` as a version of ``name`` (once per run and epoch); return the version."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(
            name, description="CLAP fine-tuned on FMA for text-to-music search"
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    # A resumed run that was killed after registering must not register twice.
    for mv in mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if mv.tags.get(run_names.VERSION_EPOCH_TAG) == tags.get(run_names.VERSION_EPOCH_TAG):
            return str(mv.version)
    checkpoint = Path(tags.get(run_names.VERSION_CHECKPOINT_TAG, ""))
    if checkpoint.name and (checkpoint / "config.json").exists():
        source = log_pyfunc_model(
            mlflow_client, run_id, checkpoint, tags.get(run_names.VERSION_EPOCH_TAG, "best")
        )
    mv = mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags))
    return str(mv.version)


def log_pyfunc_model(mlflow_client, run_id: str, checkpoint: Path, epoch: str) -> str:
    """Log ``checkpoint`` as a pyfunc model (see pyfunc_model.py) in the run; return its URI.

    The registered version's source is then a standard MLflow model:
    ``mlflow.pyfunc.load_model("models:/clap-fma@champion")`` and ``mlflow models serve``
    load it, and ``version_local_dir`` finds the save_pretrained folder inside it.
    """
    from clap_pipeline.pyfunc_model import save_pyfunc

    artifact_path = f"{run_names.PYFUNC_ARTIFACT}/epoch-{epoch}"
    with tempfile.TemporaryDirectory(prefix="clap-pyfunc-") as tmp:
        save_pyfunc(checkpoint, Path(tmp) / "model")
        mlflow_client.log_artifacts(run_id, str(Path(tmp) / "model"), artifact_path)
    return f"{mlflow_client.get_run(run_id).info.artifact_uri}/{artifact_path}"


def choose_alias(candidate_r5: float, champion_r5: float | None) -> str:
    """`champion` only when the candidate strictly beats the champion (none yet: it wins)."""
    if champion_r5 is None or candidate_r5 > champion_r5:
        return CHAMPION
    return CHALLENGER


def version_local_dir(mv, cache_dir: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A local folder with the version's files: the training checkpoint, else a download."""
    local = mv.tags.get(run_names.VERSION_CHECKPOINT_TAG)
    if local and (Path(local) / "config.json").exists():
        return Path(local)
    import mlflow.artifacts

    from clap_pipeline.pyfunc_model import checkpoint_in

    dst = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="clap-champion-"))
    dst.mkdir(parents=True, exist_ok=True)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=str(dst), tracking_uri=tracking_uri
        )
    )
    return checkpoint_in(downloaded) or downloaded  # a pyfunc model holds the checkpoint


def resolve_champion(tracking_uri: str, name: str, cache_dir: Path | None = None) -> ChampionModel:
    """The `champion` version of ``name`` with a local save_pretrained folder."""
    mlflow_client = client(tracking_uri)
    mv = alias_version(mlflow_client, name, CHAMPION)
    if mv is None:
        raise ChampionNotFoundError(
            f"no '{CHAMPION}' version of registered model {name!r} in MLflow ({tracking_uri}): "
            "materialize the `clap_model` asset first (it registers the best checkpoint)"
        )
    local = version_local_dir(mv, cache_dir, tracking_uri)
    return ChampionModel(local_dir=local, version=str(mv.version), run_id=mv.run_id or "")


# --------------------------------------------------------------------------- `ui` command


def ui_command(host: str, port: int, tracking_uri: str) -> list[str]:
    """The `mlflow server` command line that serves the project's store."""
    # One worker: a local UI needs no more, and each extra worker re-imports MLflow.
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    cmd += ["--workers", "1"]
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        cmd += [
            "--backend-store-uri",
            tracking_uri,
            "--default-artifact-root",
            str(db.parent / "artifacts"),
        ]
    else:
        cmd += ["--backend-store-uri", tracking_uri]
    return cmd


def serve_ui(host: str, port: int, dry_run: bool = False) -> int:
    """``mlflow server`` over the project's store, replacing this process (``clap-pipeline mlflow-ui``)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uri = settings.mlflow_tracking_uri
    if urlparse(uri).scheme in ("http", "https"):
        print(f"MLFLOW_TRACKING_URI={uri} is already a server: open it in a browser.")
        return 0
    cmd = ui_command(host, port, uri)
    print(f"MLflow UI on http://{host}:{port} over {uri}", flush=True)
    if dry_run:
        print(" ".join(cmd))
        return 0
    # MLflow 3's server also starts a job runner and ~7 huey worker processes (GenAI
    # jobs); a local UI over training runs needs none of them. Set it to true to keep them.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(cmd[0], cmd)  # replaces this process: Ctrl-C stops the server directly
    return 0  # pragma: no cover
