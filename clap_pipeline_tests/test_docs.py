"""The README stays a short entry point and its links lead somewhere (docs/ is built by
``mkdocs build --strict`` in ``make test``, which checks the site's own links)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 300


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_relative_links_exist() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert relative, "the README links to the docs pages"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_docs_page_is_in_the_site_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages
    assert [p for p in pages if p not in nav] == []


def _repo_files() -> list[str]:
    skip = {".venv", ".git", "site", "data", "mlruns", "node_modules"}
    return [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
    ]


def test_files_named_in_the_docs_exist() -> None:
    """`path/to/file.py` in README.md and docs/*.md names a file of the repository (a module
    may be named from the package, `search/engine.py`, or by its name alone)."""
    files = _repo_files()
    named = {
        name
        for page in [README, *sorted((ROOT / "docs").glob("*.md"))]
        for name in re.findall(r"`([\w./-]+\.(?:py|sh|yaml|toml))`", page.read_text())
    }
    assert len(named) > 20  # the pages name files
    missing = [
        name
        for name in sorted(named)
        if not any(f == name or f.endswith("/" + name.removeprefix("./")) for f in files)
    ]
    assert missing == []
