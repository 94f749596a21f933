"""The project uses Dagster's public API only, and names the Dagster versions it was checked on.

A private name (a module of dagster whose name starts with `_`) may move in any Dagster
release, and a replaced executor or run launcher would stop every run from starting when
it breaks. The pieces Dagster cannot do (``defs/run_health.py``) use names that
``dagster`` exports, and the Dagster range they were checked on is pinned: widening it in
pyproject.toml fails this test until test_run_health has run on the new versions and
the pin was moved.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from clap_pipeline.definitions import defs
from clap_pipeline.defs import run_health

REPO = Path(__file__).resolve().parents[1]
# A private module of dagster or of a dagster_* package, imported, named in config or text.
PRIVATE = re.compile(r"\bdagster\w*\.\_")
DAGSTER_PACKAGES = {"dagster", "dagster-webserver", "dagster-pipes"}


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [REPO / line for line in out.splitlines() if (REPO / line).exists()]


def test_no_private_dagster_name_anywhere() -> None:
    files = _tracked("*.py", "*.sh", "*.yaml", "*.yml", "*.toml", "Makefile")
    assert len(files) > 100  # the walk sees the repository
    offending = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert offending == []


def test_dagster_runs_with_its_own_executor_and_run_launcher() -> None:
    assert defs.executor is None  # Dagster's default: multiprocess or in-process by config
    instance = yaml.safe_load((REPO / ".dagster" / "dagster.yaml").read_text())
    assert "run_launcher" not in instance  # Dagster's DefaultRunLauncher
    assert instance["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_the_dagster_range_is_the_one_run_health_was_checked_on() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    checked = SpecifierSet(run_health.CHECKED_DAGSTER_VERSIONS)
    pinned = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.name in DAGSTER_PACKAGES:
            pinned[requirement.name] = requirement.specifier
    assert pinned == dict.fromkeys(DAGSTER_PACKAGES, checked)
    assert checked.contains(version("dagster"))
