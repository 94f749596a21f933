"""Each knob of a stage declared once: its default, bounds, choices and help.

A knob group is a frozen dataclass (``DecodeOptions``, ``TrainConfig``, ``EvalConfig``)
whose fields are declared with :func:`knob` (or with a shared :class:`Knob`, e.g.
:data:`DEVICE`, for what several stages take alike). Everything else is derived from
the group, never re-typed:

- its check (:func:`check`, called by the group's ``__post_init__``): a ``ConfigError``
  naming the knob and its bounds;
- the Dagster run config class (``defs/knob_config.py``: ``config_class``), with the
  same defaults, bounds and help, shown in the launchpad;
- the command-line flags (``cli/knob_flags.py``: ``add_knob_flags`` / ``knob_values``) and
  the flags that hand a group to a child process (:func:`to_flags`).

``clap_pipeline_tests/test_knobs.py`` fails when a knob is declared twice (a Dagster
``Config`` field, a flag or another ``knob`` of the same name).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clap_pipeline.config import ConfigError


@dataclass(frozen=True)
class Knob:
    """One knob: default, help, inclusive/exclusive bounds, allowed values, where it shows."""

    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    flag: bool = True  # offered on the command line
    run_config: bool = True  # offered as Dagster run config

    def field(self, **changes: Any) -> Any:
        """A dataclass field for this knob (``changes``: e.g. another default)."""
        knob_ = dataclasses.replace(self, **changes)
        if isinstance(knob_.default, list | dict):
            value = knob_.default
            return dataclasses.field(
                default_factory=lambda: type(value)(value), metadata={"knob": knob_}
            )
        return dataclasses.field(default=knob_.default, metadata={"knob": knob_})

    def bounds_text(self) -> str | None:
        """``>= 1``, ``in [0, 1]``, ``in (0, 1)``, ... (None: unbounded)."""
        low = (
            f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        )
        high = (
            f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        )
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return None

    def problem(self, value: Any) -> str | None:
        """What ``value`` must be, when it is not allowed (None: it is)."""
        if self.choices is not None and value not in self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        ok = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        return None if ok else self.bounds_text()

    def describe(self) -> str:
        """The help text with the bounds or choices, as flags and the launchpad show it."""
        limits = " | ".join(map(str, self.choices)) if self.choices else self.bounds_text()
        return self.help + (f" ({limits})" if limits else "")


def knob(default: Any, help: str, **bounds: Any) -> Any:
    """``name: type = knob(default, help, ge=..., choices=...)`` in a knob group."""
    return Knob(default, help, **bounds).field()


# Knobs several stages share, declared once.
DEVICE = Knob("auto", "auto (CUDA > MPS > CPU), cuda, cuda:N, mps or cpu")
EMBED_BATCH_SIZE = Knob(32, "clips per forward pass when embedding audio (memory bound)", ge=1)


@dataclass(frozen=True)
class KnobField:
    name: str
    type: Any  # the annotation (int, float, str, bool, list[str], Literal...)
    knob: Knob


def knobs_of(group: type) -> list[KnobField]:
    """The knobs of a group, in declaration order."""
    hints = typing.get_type_hints(group)
    return [
        KnobField(f.name, hints[f.name], f.metadata["knob"])
        for f in dataclasses.fields(group)
        if "knob" in f.metadata
    ]


def knob_of(group: type, name: str) -> Knob:
    """The declaration of one knob of a group (its help, default, bounds)."""
    return next(k.knob for k in knobs_of(group) if k.name == name)


def check(obj: Any, what: str | None = None) -> None:
    """Raise ConfigError naming every knob of ``obj`` whose value is out of its bounds."""
    problems = []
    for k in knobs_of(type(obj)):
        value = getattr(obj, k.name)
        wrong = k.knob.problem(value)
        if wrong:
            problems.append(f"{k.name} must be {wrong}, got {value!r}")
    if problems:
        raise ConfigError(f"invalid {what or type(obj).__name__}: " + "; ".join(problems))


def values_of(obj: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The knob values of ``obj`` (all, or ``names``)."""
    wanted = names if names is not None else [k.name for k in knobs_of(type(obj))]
    return {name: getattr(obj, name) for name in wanted}


def to_flags(obj: Any) -> list[str]:
    """Command-line flags that give a child process every knob of ``obj`` that has a flag."""
    args: list[str] = []
    for k in knobs_of(type(obj)):
        if not k.knob.flag:
            continue
        value, flag = getattr(obj, k.name), "--" + k.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + k.name.replace("_", "-"))
        elif isinstance(value, list | tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args
