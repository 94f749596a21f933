"""Which CLAP to load: a folder or hub id, a registered version (``models:/<name>/<version>``,
``models:/<name>@<alias>``), or the registry's champion (downloaded by ``tracking.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from clap_pipeline import tracking


class ModelChoiceError(RuntimeError):
    """The model named is not in the registry; the message says what to materialize."""


@dataclass(frozen=True)
class ModelChoice:
    source: str  # what load_clap() takes: a save_pretrained folder (or hub id)
    version: str | None = None  # version of the registered model `clap-fma`, when from there
    run_id: str | None = None
    label: str = ""  # how messages name it

    @property
    def name(self) -> str:
        return self.label or self.source


def champion_model(tracking_uri: str, model_name: str) -> ModelChoice:
    """The registry's `champion` of ``model_name``, as a local folder (tracking.py downloads it)."""
    champion = tracking.resolve_champion(tracking_uri, name=model_name)
    return ModelChoice(
        source=str(champion.local_dir),
        version=str(champion.version),
        run_id=champion.run_id,
        label=f"the champion ({model_name} version {champion.version})",
    )


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def registry_model(model_uri: str, tracking_uri: str, model_name: str) -> ModelChoice:
    """``models:/<model_name>/<version>`` or ``models:/<model_name>@<alias>`` from the registry."""
    match = _MODELS_URI.match(model_uri)
    if match is None or match["name"] != model_name:
        raise ValueError(
            f"--model {model_uri!r}: expected models:/{model_name}/<version>, "
            f"models:/{model_name}@<alias> or a save_pretrained folder"
        )
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    try:
        if match["version"]:
            mv = client.get_model_version(model_name, match["version"])
        else:
            mv = client.get_model_version_by_alias(model_name, match["alias"])
    except MlflowException as exc:
        raise ModelChoiceError(
            f"--model {model_uri}: not in the MLflow registry at {tracking_uri} "
            f"({str(exc).splitlines()[0]}); materialize the `clap_model` asset to register one"
        ) from exc
    local = tracking.version_local_dir(mv, tracking_uri=tracking_uri)
    return ModelChoice(str(local), str(mv.version), mv.run_id, label=model_uri)


def resolve_model(model_arg: str | None, tracking_uri: str, model_name: str) -> ModelChoice:
    """--model as given (a folder, or a models:/ URI of ``model_name``), else the champion."""
    if not model_arg:
        return champion_model(tracking_uri, model_name)
    if model_arg.startswith("models:/"):
        return registry_model(model_arg, tracking_uri, model_name)
    return ModelChoice(source=model_arg)
