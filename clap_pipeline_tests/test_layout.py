"""The package's layout rules, checked over every module (docs/layout.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import clap_pipeline

PACKAGE = Path(clap_pipeline.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
# The orchestration layer; everything else is core and runs without Dagster
# (training also standalone on a GPU host, through torchrun or Dagster Pipes).
MAX_MODULE_LINES = 700
# `clap-pipeline run-health` works on the Dagster instance (cli/ops.py).
ORCHESTRATION = {
    PACKAGE / "definitions.py",
    PACKAGE / "cli" / "ops.py",
    *PACKAGE.joinpath("defs").rglob("*.py"),
}


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_package_has_the_stage_folders() -> None:
    stages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert stages == {
        "model", "metadata", "audio", "training", "evaluation", "search", "demo", "defs", "cli"
    }  # fmt: skip
    assert len(MODULES) > 30  # the walk below sees the whole package


def test_core_modules_import_no_dagster() -> None:
    core = [m for m in MODULES if m not in ORCHESTRATION]
    for module in core:
        imported = imported_modules(ast.parse(module.read_text()))
        offending = {
            n
            for n in imported
            if n == "dagster" or n.startswith(("dagster.", "clap_pipeline.defs"))
        }
        assert not offending, f"{module.relative_to(PACKAGE)} imports {sorted(offending)}"


def test_env_vars_are_read_only_in_config() -> None:
    readers = []
    for module in MODULES:
        if module == PACKAGE / "config.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            # os.getenv(...), os.environ.get(...), os.environ[...], `env = os.environ`
            # (setdefault for a child process's environment is a write, not a read)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                if target in {"os.getenv", "os.environ.get"}:
                    readers.append(f"{module.relative_to(PACKAGE)}:{node.lineno}")
            if (
                isinstance(node, ast.Subscript)
                and ast.unparse(node.value) == "os.environ"
                and isinstance(node.ctx, ast.Load)
            ):
                readers.append(f"{module.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Assign | ast.IfExp) and "os.environ" in {
                ast.unparse(n) for n in ast.iter_child_nodes(node)
            }:
                readers.append(f"{module.relative_to(PACKAGE)}:{node.lineno}")
    assert readers == []


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {m.relative_to(PACKAGE): len(m.read_text().splitlines()) for m in MODULES}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


# floor (top-level modules and model/) < metadata < audio < training < evaluation < search
# < demo < the entry points (demo/ makes offline data from any stage's contract; no stage
# imports it). model/ is the floor's package: every stage loads, embeds and saves through it.
FLOOR_PACKAGES = {"model"}
STAGES = ["metadata", "audio", "training", "evaluation", "search"]
STAGE_ORDER = [*STAGES, "demo"]
ENTRY_POINTS = {"defs", "cli", "definitions"}
# The MLflow pyfunc model is the trained model as MLflow loads it: it decodes audio files.
UPWARD_ALLOWED = {"pyfunc_model.py": {"clap_pipeline.audio.decode"}}


def _rank(first_part: str) -> int:
    if first_part in ENTRY_POINTS:
        return len(STAGE_ORDER) + 1
    return STAGE_ORDER.index(first_part) + 1 if first_part in STAGE_ORDER else 0


def test_imports_go_one_way_through_the_stages() -> None:
    upward = []
    for module in MODULES:
        relative = module.relative_to(PACKAGE)
        # `python -m clap_pipeline.<stage>` aliases of `clap-pipeline <command>` are entry points.
        top = "cli" if relative.name == "__main__.py" else relative.parts[0].removesuffix(".py")
        rank = _rank(top)
        allowed = UPWARD_ALLOWED.get(str(relative), set())
        for name in imported_modules(ast.parse(module.read_text())):
            parts = name.split(".")
            above = parts[0] == "clap_pipeline" and len(parts) > 1 and _rank(parts[1]) > rank
            if above and name not in allowed:
                upward.append(f"{relative} imports {name}")
    assert upward == []


def test_no_stage_imports_another_stages_modules() -> None:
    """A stage reads what another stage wrote through the floor (dataset.py, selection.py,
    training_report.py, model/ ...), never through that stage's own modules."""
    crossing = []
    for module in MODULES:
        relative = module.relative_to(PACKAGE)
        if relative.parts[0] not in STAGES or relative.name == "__main__.py":
            continue
        for name in imported_modules(ast.parse(module.read_text())):
            parts = name.split(".")
            other_stage = len(parts) > 1 and parts[1] in STAGES and parts[1] != relative.parts[0]
            if parts[0] == "clap_pipeline" and other_stage:
                crossing.append(f"{relative} imports {name}")
    assert crossing == []


def test_the_floor_and_the_model_import_no_stage() -> None:
    """pyfunc_model.py (the pyfunc model MLflow loads) and model/ use no training code."""
    offending = []
    for module in MODULES:
        relative = module.relative_to(PACKAGE)
        if relative.parts[0] not in FLOOR_PACKAGES and str(relative) != "pyfunc_model.py":
            continue
        for name in imported_modules(ast.parse(module.read_text())):
            stage = any(
                name == f"clap_pipeline.{s}" or name.startswith(f"clap_pipeline.{s}.")
                for s in STAGES
            )  # training_report.py is the floor's, not training's
            if stage and name not in UPWARD_ALLOWED.get(str(relative), set()):
                offending.append(f"{relative} imports {name}")
    assert offending == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path, module: str | None, level: int) -> str:
    """The absolute name of ``from <dots><module> import`` written in ``path``."""
    if level == 0:
        return module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def import_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports anywhere (functions, TYPE_CHECKING and
    relative imports too; no exemptions)."""
    names = {_module_name(m) for m in MODULES}
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges = set()
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node.module, node.level)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            edges.update(t for t in targets if t in names)
        name = _module_name(module)
        graph[name] = edges - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycles_are_found() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_counting_function_level_imports() -> None:
    graph = import_graph()
    assert "clap_pipeline.training.loop" in graph  # the walk sees the package
    # function-level and relative imports are edges too
    assert "clap_pipeline.model.clap" in graph["clap_pipeline.pyfunc_model"]
    assert "clap_pipeline.defs.resources" in graph["clap_pipeline.defs.audio"]
    assert import_cycles(graph) == []


def test_one_search_path() -> None:
    """The CLI's search/playlist and the service answer through search/engine.py: only it
    ranks (imports the vector index) and builds results; they import it."""
    graph = import_graph()
    rankers = {m for m, edges in graph.items() if "clap_pipeline.search.vector_index" in edges}
    assert rankers == {"clap_pipeline.search.engine"}
    for user in ("cli.search", "search.service", "search.webapp", "search.results"):
        assert "clap_pipeline.search.engine" in graph[f"clap_pipeline.{user}"], user


def test_argparse_only_in_the_cli() -> None:
    """One command line (`clap-pipeline`); config.py derives the settings' flags for it."""
    parsers = {
        str(m.relative_to(PACKAGE))
        for m in MODULES
        if "argparse" in imported_modules(ast.parse(m.read_text()))
    }
    assert {p for p in parsers if not p.startswith("cli/")} == {"config.py"}


MAX_DEFINITION_BODY_LINES = 30
DAGSTER_DEFINITIONS = {
    "asset", "multi_asset", "asset_check", "multi_asset_check", "sensor", "asset_sensor",
    "multi_asset_sensor", "run_status_sensor", "run_failure_sensor", "schedule",
}  # fmt: skip


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def definition_body_lines(tree: ast.AST) -> dict[str, int]:
    """Lines of body (docstring left out) of each asset/check/sensor/schedule function."""
    sizes = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not any(_decorator_name(d) in DAGSTER_DEFINITIONS for d in node.decorator_list):
            continue
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        sizes[node.name] = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
    return sizes


def test_definition_bodies_are_measured() -> None:
    source = '''
@asset(group_name="x")
def a(context):
    """Doc."""
    x = 1
    return MaterializeResult(
        metadata={"x": x},
    )


@dg.sensor
def s(): return None


def plain():
    pass
'''
    assert definition_body_lines(ast.parse(source)) == {"a": 4, "s": 1}


def test_assets_checks_sensors_and_schedules_are_short_wiring() -> None:
    """The work lives in core modules; a definition in defs/ wires it (<= 30 lines)."""
    sizes = {
        f"{module.relative_to(PACKAGE)}:{name}": lines
        for module in sorted(PACKAGE.joinpath("defs").rglob("*.py"))
        for name, lines in definition_body_lines(ast.parse(module.read_text())).items()
    }
    assert len(sizes) > 15  # the walk sees the definitions
    assert {k: n for k, n in sizes.items() if n > MAX_DEFINITION_BODY_LINES} == {}


def test_asset_groups_are_the_folders_of_the_work_they_wrap() -> None:
    """A defs module's assets are in the group named as the stage folder its work lives in."""
    from dagster import load_assets_from_modules

    from clap_pipeline import definitions

    stages = {"metadata", "audio", "training", "evaluation", "search"}
    for module in definitions._asset_modules:
        tree = ast.parse(Path(module.__file__).read_text())
        wrapped = {
            name.split(".")[1]
            for name in imported_modules(tree)
            if name.startswith("clap_pipeline.") and name.split(".")[1] in stages
        }
        groups = {
            group
            for assets in load_assets_from_modules([module])
            for group in assets.group_names_by_key.values()
        }
        assert len(wrapped) == 1 and groups == wrapped, (module.__name__, wrapped, groups)


MAX_FUNCTION_LINES = 60


def test_functions_are_at_most_60_lines() -> None:
    long: dict[tuple[str, str], int] = {}
    for module in MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[(str(module.relative_to(PACKAGE)), node.name)] = lines
    assert long == {}, "split these functions (<= 60 lines)"


MAX_TRACK_FILES = 12
LAYOUT_DOC = PACKAGE.parent / "docs" / "layout.md"


def _walk_rows() -> list[str]:
    text = LAYOUT_DOC.read_text()
    walk = text[text.index("### Follow one track") :]
    return [line for line in walk.splitlines() if re.match(r"\| \d+ \|", line)]


def test_one_track_is_followed_through_at_most_12_files() -> None:
    """docs/layout.md's walk: every file and function it names exists, and it names <= 12
    package files (each hop's function and the modules the track's data passes through)."""
    rows = _walk_rows()
    assert len(rows) >= 5
    files: set[str] = set()
    checked = 0
    for row in rows:
        step = row.split("|")[2]
        for path, names in re.findall(r"`([\w/]+\.py)` → ((?:`[\w.]+`(?:, )?)+)", step):
            source = (PACKAGE / path).read_text()
            for name in re.findall(r"`([\w.]+)`", names):
                defined = name.split(".")[-1]
                assert re.search(rf"^\s*(def|class) {defined}\b", source, re.M), (path, name)
                checked += 1
        files |= set(re.findall(r"`([\w/]+\.py)`", row))
    assert checked >= len(rows)  # every hop names its file and function
    assert all((PACKAGE / f).is_file() for f in files), files
    assert len(files) <= MAX_TRACK_FILES, sorted(files)
    title = LAYOUT_DOC.read_text().split("### Follow one track")[1].split("|")[0]
    assert f"{len(rows)} hops through {len(files)} files" in " ".join(title.split())
