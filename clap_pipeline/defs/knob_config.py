"""A stage's knob group (``knobs.py``) as Dagster run config, derived, never re-typed.

``config_class(TrainConfig, "ClapTrainingConfig", ...)`` is a ``dagster.Config`` with one
field per knob: the same type (choices as a ``Literal``), default, bounds and help, so the
launchpad shows and checks what the core declares. Fields only Dagster has (the training
launcher) are passed as ``extra``. ``to_group()`` gives the core dataclass back.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from dagster import Config
from pydantic import Field, create_model

from clap_pipeline.knobs import KnobField, knobs_of


class KnobConfig(Config):
    """Run config derived from a knob group; ``to_group`` builds the group from it."""

    knob_group: ClassVar[type]

    def to_group(self, **changes: Any) -> Any:
        group = type(self).knob_group
        values = {k.name: getattr(self, k.name) for k in knobs_of(group) if k.knob.run_config}
        return group(**{**values, **changes})


def _field(k: KnobField) -> tuple[Any, Any]:
    knob = k.knob
    annotation = Literal[knob.choices] if knob.choices is not None else k.type  # type: ignore[valid-type]
    bounds = {name: getattr(knob, name) for name in ("ge", "gt", "le", "lt")}
    bounds = {name: value for name, value in bounds.items() if value is not None}
    if isinstance(knob.default, list | dict):
        value = knob.default
        default: dict[str, Any] = {"default_factory": lambda: type(value)(value)}
    else:
        default = {"default": knob.default}
    return annotation, Field(**default, description=knob.help, **bounds)


def config_class(
    group: type, name: str, doc: str, module: str, extra: dict[str, tuple[Any, Any]] | None = None
) -> type[KnobConfig]:
    """The Dagster run config of ``group``'s knobs (those offered as run config) + ``extra``."""
    fields = {k.name: _field(k) for k in knobs_of(group) if k.knob.run_config}
    namespace = {"knob_group": group, "__doc__": doc, "__module__": module}
    base = type(f"{name}Base", (KnobConfig,), namespace)
    return create_model(name, __base__=base, __module__=module, **fields, **(extra or {}))
