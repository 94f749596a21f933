"""Atomic file writes and short-lived DuckDB connections.

Every output is written aside and renamed into place, so a crash or ``kill -9``
leaves the previous good version. DuckDB allows one read-write process per file, or
many read-only ones: writers keep connections short, readers open read-only, and both
wait for the other side's lock instead of failing.

Waiting alone is unfair: readers in other processes overlap and always hold the file,
starving a writer, and writers re-taking the file back to back starve a reader. So
every connection first takes a *turn*, first come first served across processes:
a ticket from a counter in ``<file>.turns/`` (incremented under an exclusive
``flock``), and an entry file named by the ticket that its owner keeps locked. A
writer waits for every entry ahead of it and keeps its own for the whole connection
(writers are serialised); a reader waits only for the writers ahead of it and drops
its entry once connected (readers overlap). An entry whose owner died (``kill -9``)
is unlocked by the kernel, so it never blocks anybody.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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
    """Delete the temp files (or folders) among ``paths`` that no live process claims.

    A writer using ``atomic_path(..., claim=True)`` holds a lock on its temp file for as
    long as it lives; the kernel drops it when the process dies, even by ``kill -9``.
    Unclaimed temps (folders, or files of writers that do not claim) count as orphaned:
    call this only where no other live process writes without a claim. Returns them.
    """
    removed: list[Path] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer's
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
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


def _turns_dir(path: Path) -> Path:
    return path.with_name(path.name + ".turns")


_COUNTER = "counter"


def _flock_until(fd: int, operation: int, deadline: float, what: str) -> None:
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DuckDBLockTimeout(what) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _take_ticket(
    turns: Path, kind: str, deadline: float, timeout_s: float
) -> tuple[int, Path, list[Path]]:
    """Our locked entry file (``<ticket>.<r|w>``) and the entries ahead of it we must wait for."""
    turns.mkdir(exist_ok=True)
    counter = os.open(turns / _COUNTER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_until(
            counter, fcntl.LOCK_EX, deadline, f"{turns}: ticket counter locked for {timeout_s:g} s"
        )
        ticket = int(os.pread(counter, 32, 0).decode() or 0) + 1
        os.pwrite(counter, f"{ticket:020d}".encode(), 0)
        entry = turns / f"{ticket:020d}.{kind}"
        fd = os.open(entry, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours: nobody else has opened it yet
        # Listed under the counter lock: every entry is already locked by its owner,
        # or its owner is gone. Later arrivals get higher tickets.
        ahead = sorted(
            p
            for p in turns.iterdir()
            if p.name != _COUNTER and p.name < entry.name and (kind == "w" or p.name.endswith(".w"))
        )
    finally:
        os.close(counter)  # releases the counter lock
    return fd, entry, ahead


def _wait_for(entry: Path, deadline: float, what: str) -> None:
    """Return once ``entry``'s owner released it (done) or died; remove it then."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except FileNotFoundError:
        return  # done already
    try:
        _flock_until(fd, fcntl.LOCK_SH, deadline, what)
        entry.unlink(missing_ok=True)  # a dead owner's entry: nobody else needs it
    finally:
        os.close(fd)


def _release(fd: int, entry: Path) -> None:
    entry.unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def _turn(
    path: Path, read_only: bool, deadline: float, timeout_s: float
) -> Iterator[Callable[[], None]]:
    """Wait for our turn (first come, first served); yield a function that ends it early.

    A read-only location (no ``.turns`` folder can be made) has no writers to wait for.
    """
    kind = "r" if read_only else "w"
    try:
        fd, entry, ahead = _take_ticket(_turns_dir(path), kind, deadline, timeout_s)
    except OSError:  # read-only folder or file system: nobody writes there
        yield lambda: None
        return
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            _release(fd, entry)

    try:
        for other in ahead:
            _wait_for(
                other,
                deadline,
                f"{path}: a writer has held it for more than {timeout_s:g} s"
                if read_only
                else f"{path}: another process has been writing for more than {timeout_s:g} s",
            )
        yield release
    finally:
        release()


@contextlib.contextmanager
def duckdb_connection(
    path: str | Path, *, read_only: bool = False, lock_timeout_s: float = 60.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the project's DuckDB file, waiting (up to ``lock_timeout_s``) for other processes.

    Connections take turns, first come first served; writers keep theirs while connected
    (see the module docstring).
    """
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(
            f"DuckDB file {path} does not exist yet: materialize the `tracks` asset first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    with _turn(path, read_only, deadline, lock_timeout_s) as end_turn:
        delay = 0.05
        while True:
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
        if read_only:
            end_turn()  # connected: readers overlap, the writers behind us wait for DuckDB
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


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``BEGIN`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (Ctrl-C included).

    Readers see everything the block wrote or none of it.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
