"""Each knob declared once (knobs.py): the run config and the flags are derived from it."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

import clap_pipeline
from clap_pipeline.audio.waveforms import DecodeOptions
from clap_pipeline.cli.search import add_commands as add_search_commands
from clap_pipeline.cli.train import evaluation_parser, training_parser
from clap_pipeline.config import ConfigError
from clap_pipeline.defs.audio import WaveformsConfig
from clap_pipeline.defs.evaluation import EvaluationConfig
from clap_pipeline.defs.knob_config import KnobConfig
from clap_pipeline.defs.search import TrackEmbeddingsConfig
from clap_pipeline.defs.training import ClapTrainingConfig, training_arguments
from clap_pipeline.evaluation.inputs import EvalConfig, EvaluationError
from clap_pipeline.knobs import DEVICE, Knob, check, knobs_of, to_flags
from clap_pipeline.search.options import EmbedOptions, QueryOptions, ServeOptions
from clap_pipeline.training.config import TrainConfig, TrainingError

PACKAGE = Path(clap_pipeline.__file__).parent
# Each knob group and where it is declared: (module, class name).
GROUPS = {DecodeOptions: ("clap_pipeline.audio.waveforms", "DecodeOptions"),
          TrainConfig: ("clap_pipeline.training.config", "TrainConfig"),
          EvalConfig: ("clap_pipeline.evaluation.inputs", "EvalConfig"),
          EmbedOptions: ("clap_pipeline.search.options", "EmbedOptions"),
          ServeOptions: ("clap_pipeline.search.options", "ServeOptions"),
          QueryOptions: ("clap_pipeline.search.options", "QueryOptions")}  # fmt: skip
RUN_CONFIGS: dict[type, type[KnobConfig]] = {
    DecodeOptions: WaveformsConfig,
    TrainConfig: ClapTrainingConfig,
    EvalConfig: EvaluationConfig,
    EmbedOptions: TrackEmbeddingsConfig,
}
# Knobs several stages share: one declaration (knobs.py), by field name.
SHARED = {"device": DEVICE}


def _declared_names(tree: ast.Module) -> list[tuple[int, str]]:
    """Names this module declares as a pydantic field, a flag or a knob (line, name)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and isinstance(item.value, ast.Call)
                    and getattr(item.value.func, "id", None) in ("Field", "knob")
                ):
                    found.append((item.lineno, item.target.id))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found += [(node.lineno, f[2:].replace("-", "_")) for f in flags if f.startswith("--")]
        elif isinstance(node, ast.Dict):  # extra run config: {"name": (type, Field(...))}
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.Tuple)
                    and any(
                        getattr(getattr(e, "func", None), "id", None) == "Field" for e in value.elts
                    )
                ):
                    found.append((key.lineno, key.value))
    return found


def _imported_groups(tree: ast.Module) -> list[type]:
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    return [group for group, where in GROUPS.items() if where in imported]


def test_every_field_of_a_group_is_a_knob_with_help() -> None:
    for group in GROUPS:
        declared = [
            f for f in group.__dataclass_fields__.values() if f._field_type.name == "_FIELD"
        ]
        assert [k.name for k in knobs_of(group)] == [f.name for f in declared]
        assert all(k.knob.help for k in knobs_of(group))


def test_no_module_declares_a_knob_of_the_group_it_wraps_again() -> None:
    """A Dagster config field, a flag or a second knob with the name of a knob of a group
    the module imports is a copy of that knob (it must be derived instead)."""
    copies = []
    for module in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(module.read_text())
        names = {k.name for g in _imported_groups(tree) for k in knobs_of(g)}
        copies += [
            f"{module.relative_to(PACKAGE)}:{line}: {name}"
            for line, name in _declared_names(tree)
            if name in names
        ]
    assert copies == []


def test_a_group_declares_each_knob_once() -> None:
    for module_name, class_name in GROUPS.values():
        path = PACKAGE.parent / (module_name.replace(".", "/") + ".py")
        (cls,) = [
            n for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ClassDef) and n.name == class_name
        ]  # fmt: skip
        names = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]
        assert len(names) == len(set(names)), class_name


@pytest.mark.parametrize("group", list(RUN_CONFIGS))
def test_dagster_run_config_is_the_group(group: type) -> None:
    config = RUN_CONFIGS[group]
    for k in knobs_of(group):
        if not k.knob.run_config:
            assert k.name not in config.model_fields
            continue
        info: FieldInfo = config.model_fields[k.name]
        assert info.get_default(call_default_factory=True) == k.knob.default, k.name
        assert info.description == k.knob.help
        names = ("ge", "gt", "le", "lt")
        bounds = {b: getattr(m, b) for m in info.metadata for b in names if hasattr(m, b)}
        expected = {b: getattr(k.knob, b) for b in names}
        assert bounds == {b: v for b, v in expected.items() if v is not None}, k.name
    assert config().to_group() == group()


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _search_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_search_commands(parser.add_subparsers())
    return _subcommand(parser, command)


@pytest.mark.parametrize(
    ("group", "parser", "required"),
    [
        (TrainConfig, training_parser(), []),
        (EvalConfig, _subcommand(evaluation_parser(), "run"), []),
        (ServeOptions, _search_parser("serve"), []),
        (QueryOptions, _search_parser("search"), ["a query"]),
        (QueryOptions, _search_parser("playlist"), ["a query", "--m3u", "out.m3u"]),
    ],
)
def test_flags_are_the_group(
    group: type, parser: argparse.ArgumentParser, required: list[str]
) -> None:
    flags = _flags(parser)
    for k in knobs_of(group):
        action = flags[k.name]
        assert action.default == k.knob.default
        assert action.help is not None and k.knob.help in action.help
        if k.knob.choices is not None:
            assert tuple(action.choices) == k.knob.choices
    values = vars(parser.parse_args(required))
    assert group(**{k.name: values[k.name] for k in knobs_of(group)}) == group()


def test_the_child_process_flags_round_trip() -> None:
    config = ClapTrainingConfig(batch_size=8, resume=False, split="hash", learning_rate=1e-3)
    args = training_parser().parse_args(training_arguments(config))
    assert TrainConfig(**{k.name: getattr(args, k.name) for k in knobs_of(TrainConfig)}) == (
        config.to_group()
    )
    flags = to_flags(EvalConfig(seed=3, log_to_mlflow=False))
    assert flags[-2:] == ["--include-validation", "--no-log-to-mlflow"]
    assert flags[flags.index("--seed") + 1] == "3"


def test_out_of_bounds_values_name_the_knob() -> None:
    with pytest.raises(
        TrainingError, match=r"batch_size must be >= 2, got 1; .*split must be one of"
    ):
        TrainConfig(batch_size=1, split="nope").validate()
    with pytest.raises(EvaluationError, match=r"confidence must be in \(0, 1\), got 1.5"):
        EvalConfig(confidence=1.5).validate()
    share = Knob(0.5, "a share", ge=0, le=1)
    assert share.problem(0.5) is None and share.problem(2) == "in [0, 1]"
    assert share.describe() == "a share (in [0, 1])"
    assert Knob(1, "n", ge=1).problem(0) == ">= 1" and Knob(1.0, "x", gt=0).bounds_text() == "> 0"
    with pytest.raises(ConfigError, match=r"invalid evaluation config: n_bootstrap must be >= 1"):
        check(EvalConfig(n_bootstrap=0), "evaluation config")
    with pytest.raises(
        ConfigError, match=r"invalid decode options: timeout_s must be > 0.0, got 0; decoder"
    ):
        DecodeOptions(timeout_s=0, decoder="sox")


def test_a_shared_knob_is_declared_only_in_knobs_py() -> None:
    """``device`` is DEVICE everywhere: no other Field, flag, knob or literal default of it."""
    copies = []
    for module in sorted(PACKAGE.rglob("*.py")):
        if module == PACKAGE / "knobs.py":
            continue
        tree = ast.parse(module.read_text())
        where = str(module.relative_to(PACKAGE))
        copies += [
            f"{where}:{line}: {name}" for line, name in _declared_names(tree) if name in SHARED
        ]
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [*node.args.args, *node.args.kwonlyargs]
                defaults = [*node.args.defaults, *node.args.kw_defaults]
                named = (
                    dict(zip([p.arg for p in params][-len(defaults) :], defaults, strict=True))
                    if defaults
                    else {}
                )
                copies += [
                    f"{where}:{node.lineno}: {node.name}({name}=...)"
                    for name, default in named.items()
                    if name in SHARED
                    and isinstance(default, ast.Constant)
                    and default.value == SHARED[name].default
                ]
    assert copies == []
