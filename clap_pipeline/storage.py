"""Atomic file writes and short-lived DuckDB connections.

Every output is written aside and renamed into place, so a crash or ``kill -9``
leaves the previous good version. DuckDB allows one read-write process per file, or
many read-only ones: writers keep connections short, readers open read-only, and both
wait for the other side's lock instead of failing.

Waiting alone can starve a writer (readers in other processes overlap and always hold
the file), so writers also take a *write turn*: an exclusive ``flock`` on
``<file>.write.lock`` held for the whole connection. It serialises writers across
processes, and a reader passes through it before each attempt to open, so readers
queue behind a waiting writer while those already reading finish.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb


@contextlib.contextmanager
def atomic_path(target: str | Path, *, claim: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it over ``target`` on success.

    The temp name starts with ``.`` and ends with ``.tmp`` so dataset readers
    (pyarrow ignores ``.``/``_`` prefixed files) never see a partial file.
    Works for files and directories.

    ``claim`` (files only) creates the temp file and holds an exclusive ``flock`` on it
    until it is renamed: :func:`remove_orphaned_temps` then tells the temp file of a
    live writer from one left by a killed process, at any age.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    claim_fd = _claim_new(tmp) if claim else None
    try:
        yield tmp
        if tmp.is_dir() and target.is_dir():
            # Directories cannot be renamed over a non-empty directory: swap them.
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if claim_fd is not None:
            os.close(claim_fd)  # releases the claim, after the rename


def _claim_new(path: Path) -> int:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def remove_orphaned_temps(paths: Iterable[Path]) -> list[Path]:
    """Delete the temp files among ``paths`` that no live process claims; return them.

    A writer using ``atomic_path(..., claim=True)`` holds a lock on its temp file for as
    long as it lives; the kernel drops it when the process dies, even by ``kill -9``.
    """
    removed: list[Path] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer's
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


class DuckDBLockTimeout(RuntimeError):
    """Another process kept the DuckDB file (or its write turn) longer than the timeout."""


def _write_turn_path(path: Path) -> Path:
    return path.with_name(path.name + ".write.lock")


def _flock_until(handle, operation: int, deadline: float, what: str) -> None:
    delay = 0.02
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DuckDBLockTimeout(what) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def _write_turn(path: Path, deadline: float, timeout_s: float) -> Iterator[None]:
    with open(_write_turn_path(path), "a+b") as handle:
        _flock_until(
            handle,
            fcntl.LOCK_EX,
            deadline,
            f"{path}: another process has been writing for more than {timeout_s:g} s",
        )
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _after_waiting_writer(path: Path, deadline: float, timeout_s: float) -> None:
    """Return once no writer holds the write turn (readers never create the lock file)."""
    try:
        handle = open(_write_turn_path(path), "rb")  # noqa: SIM115 (closed just below)
    except FileNotFoundError:
        return  # nobody has written through this module yet
    with handle:
        _flock_until(
            handle,
            fcntl.LOCK_SH,
            deadline,
            f"{path}: a writer has held it for more than {timeout_s:g} s",
        )
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def duckdb_connection(
    path: str | Path, *, read_only: bool = False, lock_timeout_s: float = 60.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the project's DuckDB file, waiting (up to ``lock_timeout_s``) for other processes.

    Writers hold the file's write turn while connected (see the module docstring).
    """
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(
            f"DuckDB file {path} does not exist yet: materialize the `tracks` asset first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    turn = contextlib.nullcontext() if read_only else _write_turn(path, deadline, lock_timeout_s)
    with turn:
        delay = 0.05
        while True:
            if read_only:
                _after_waiting_writer(path, deadline, lock_timeout_s)
            try:
                con = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise DuckDBLockTimeout(
                        f"{path}: still locked by another process after {lock_timeout_s:g} s "
                        f"({exc})"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    # fetchall() consumes the result: a pending one makes DuckDB refuse register() later.
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    return bool(rows[0][0])
