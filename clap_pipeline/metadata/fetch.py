"""Download and unpack the Free Music Archive: ``clap-pipeline fetch-fma``.

``fma_metadata.zip`` and ``fma_<subset>.zip`` are fetched from FMA's published
URLs into ``<download_dir>/<name>.part`` with HTTP Range requests, so an
interrupted download (dropped connection, Ctrl-C, killed process) resumes from
the part file's size on the next call. The zip is renamed to its final name only
after its SHA1 matches the published digest: a file under the final name is a
verified download and is never fetched again.

Extraction takes ``tracks.csv``/``genres.csv`` from the metadata zip and the
clips ``fma_<subset>/NNN/NNNNNN.mp3`` (all, or the first ``limit`` by track_id)
from the audio zip. Each file is written to a hidden temp sibling and renamed,
so a crash never leaves a truncated clip under a real name. FMA's zips use BZIP2
(Python's ``zipfile`` reads it); bz2 decompression releases the GIL, so clips
are extracted by a few threads.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from clap_pipeline.dataset import audio_path
from clap_pipeline.progress import DownloadProgress, ProgressLog, human_bytes
from clap_pipeline.reporting import Log
from clap_pipeline.storage import atomic_path

FMA_BASE_URL = "https://os.unil.cloud.switch.ch/fma/"
SUBSETS = ("small", "medium", "large")
METADATA_ZIP = "fma_metadata.zip"
METADATA_FILES = ("tracks.csv", "genres.csv")

# Published SHA1 digests of FMA's release (mdeff/fma README).
FMA_SHA1: Mapping[str, str] = {
    "fma_metadata.zip": "f0df49ffe5f2a6008d7dc83c6915b31835dfe733",
    "fma_small.zip": "ade154f733639d52e35e32f5593efe5be76c6d70",
    "fma_medium.zip": "c67b69ea232021025fca9231fc1c7c1a063ab50b",
    "fma_large.zip": "497109f4dd721066b5ce5e5f250ec604dc78939e",
}

USER_AGENT = "clap-pipeline-fetch-fma/1 (+python-urllib)"
CHUNK_SIZE = 1 << 20
# HTTP statuses worth retrying: the server is busy or failing, not refusing us.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class FetchError(RuntimeError):
    """A download or extraction failed; the message names the URL or file."""


class ChecksumError(FetchError):
    """A downloaded zip or an extracted clip does not match its published SHA1."""


class _Transient(Exception):
    """A network failure that a new (Range) request may get past."""


def subset_zip_name(subset: str) -> str:
    if subset not in SUBSETS:
        raise ValueError(f"unknown FMA subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    return f"fma_{subset}.zip"


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- download


@dataclass
class DownloadResult:
    path: Path
    skipped: bool  # already downloaded and verified earlier
    fetched_bytes: int = 0  # bytes transferred by this call
    resumed_from: int = 0  # size of the part file this call started from


class _PartFile:
    """The ``.part`` file and the SHA1 of exactly the bytes it holds."""

    def __init__(self, path: Path, log: Log) -> None:
        self.path = path
        self.hasher = hashlib.sha1()
        self.size = 0
        self.received = 0  # bytes this process got from the network
        if path.exists():
            size = path.stat().st_size
            if size:
                log(f"{path.name}: resuming, hashing the {human_bytes(size)} already downloaded")
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_SIZE):
                    self.hasher.update(chunk)
                    self.size += len(chunk)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha1()
        self.size = 0


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of ``bytes a-b/total`` or ``bytes */total``; None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(
    url: str,
    part: _PartFile,
    *,
    timeout: float,
    log: Log,
    progress_stream: IO[str] | None,
) -> None:
    """Bring ``part`` to the full file with one response; raises _Transient to retry."""
    for _restart in range(3):
        try:
            response = _open(url, part.size, timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and part.size:
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == part.size:
                    return  # the part file already holds every byte
                log(
                    f"{part.path.name}: server says the {part.size} bytes on disk do not fit "
                    f"the file ({total} bytes); restarting the download"
                )
                part.reset()
                continue
            if exc.code in TRANSIENT_HTTP:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
            raise FetchError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise _Transient(str(getattr(exc, "reason", None) or exc)) from exc

        with response:
            status = response.status
            if status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != part.size:
                    log(f"{part.path.name}: server sent bytes from {start}, not {part.size}")
                    part.reset()
                    continue
            elif status == 200:
                if part.size:
                    log(f"{part.path.name}: server ignored the Range request; restarting")
                    part.reset()
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            else:
                raise FetchError(f"download of {url} failed: unexpected HTTP {status}")
            _stream(response, part, total, progress_stream)
        if total is not None and part.size < total:
            raise _Transient(f"connection closed after {part.size} of {total} bytes")
        return
    raise FetchError(f"download of {url} failed: the server keeps answering unusable ranges")


def _stream(
    response: BinaryIO, part: _PartFile, total: int | None, progress_stream: IO[str] | None
) -> None:
    bar = DownloadProgress(part.path.name.removesuffix(".part"), total, part.size, progress_stream)
    part.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with part.path.open("ab") as out:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"{type(exc).__name__}: {exc}") from exc
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:  # disk full: not a network problem, no retry
                    raise FetchError(f"cannot write {part.path}: {exc}") from exc
                part.hasher.update(chunk)
                part.size += len(chunk)
                part.received += len(chunk)
                bar.update(part.size)
    finally:
        bar.finish()


def _gave_up(url: str, part: _PartFile, attempts: int, exc: Exception) -> FetchError:
    kept = (
        f"the {human_bytes(part.size)} received are kept in {part.path}; "
        "run the command again to resume"
        if part.size
        else "nothing was received"
    )
    return FetchError(f"download of {url} failed after {attempts} attempt(s): {exc}; {kept}")


def download(
    url: str,
    dest: str | Path,
    sha1: str,
    *,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    log: Log = _stderr_log,
    progress_stream: IO[str] | None = None,
) -> DownloadResult:
    """Fetch ``url`` to ``dest`` via ``dest.part`` (resumable), verify its SHA1, rename.

    A file already at ``dest`` was verified before it got that name: it is kept
    as is. Network failures are retried ``retries`` times with a Range request
    from the bytes on disk; after that a FetchError names the URL and the part
    file stays for the next call to resume. A SHA1 mismatch deletes the part
    file (its bytes cannot be trusted) and raises ChecksumError.
    """
    dest = Path(dest)
    if dest.exists():
        log(f"{dest.name}: already downloaded and verified ({dest})")
        return DownloadResult(dest, skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(dest.name + ".part"), log)
    resumed_from = part.size
    log(
        f"{dest.name}: downloading {url}"
        + (f" (resuming at {human_bytes(resumed_from)})" if resumed_from else "")
    )
    for failures in range(retries + 1):
        try:
            _transfer(url, part, timeout=timeout, log=log, progress_stream=progress_stream)
            break
        except _Transient as exc:
            if failures == retries:
                raise _gave_up(url, part, failures + 1, exc) from exc
            wait_s = min(retry_wait * 2**failures, 60.0)
            log(f"{dest.name}: {exc}; retrying in {wait_s:.0f} s with a Range request")
            time.sleep(wait_s)
    actual = part.hasher.hexdigest()
    if actual != sha1.lower():
        part.path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name}: SHA1 mismatch (expected {sha1.lower()}, got {actual}) for the "
            f"download of {url}; the corrupt file {part.path} was removed, run again to "
            "download it anew"
        )
    os.replace(part.path, dest)
    log(f"{dest.name}: SHA1 verified ({actual})")
    return DownloadResult(
        dest, skipped=False, fetched_bytes=part.received, resumed_from=resumed_from
    )


# --------------------------------------------------------------------------- extraction


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing anything that would land outside ``root`` (zip-slip)."""
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise FetchError(f"refusing to extract {relative!r}: it points outside {root}")
    return target


@contextmanager
def _temp_sibling(target: Path) -> Iterator[Path]:
    """Hidden temp file next to ``target``, renamed over it on success.

    Like storage.atomic_path but without the directory fsync per file, which
    costs milliseconds each and would add minutes over 106k clips.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out_path: Path) -> str:
    """Decompress ``info`` into ``out_path``; return its SHA1. zipfile checks the CRC."""
    hasher = hashlib.sha1()
    with zf.open(info) as src, out_path.open("wb") as dst:
        while chunk := src.read(CHUNK_SIZE):
            dst.write(chunk)
            hasher.update(chunk)
    return hasher.hexdigest()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{path} is not a readable zip file: {exc}") from exc


def _file_crc32(path: Path) -> int:
    import zlib

    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            crc = zlib.crc32(chunk, crc)
    return crc


def extract_metadata(
    zip_path: str | Path, metadata_dir: str | Path, *, log: Log = _stderr_log
) -> list[Path]:
    """Extract ``tracks.csv`` and ``genres.csv`` (under ``fma_metadata/``) atomically.

    A file already there with the member's size and CRC-32 is left untouched.
    """
    zip_path, metadata_dir = Path(zip_path), Path(metadata_dir)
    written: list[Path] = []
    with _open_zip(zip_path) as zf:
        by_name = {info.filename: info for info in zf.infolist()}
        for name in METADATA_FILES:
            info = by_name.get(f"fma_metadata/{name}") or by_name.get(name)
            if info is None:
                raise FetchError(f"{zip_path} has no fma_metadata/{name}: is it fma_metadata.zip?")
            target = _inside(metadata_dir, name)
            if (
                target.is_file()
                and target.stat().st_size == info.file_size
                and _file_crc32(target) == info.CRC
            ):
                log(f"{name}: already extracted ({target})")
                written.append(target)
                continue
            try:
                with atomic_path(target) as tmp:
                    _copy_member(zf, info, tmp)
            except zipfile.BadZipFile as exc:
                raise FetchError(f"{zip_path}: {info.filename} is corrupt: {exc}") from exc
            log(f"{name}: extracted to {target} ({human_bytes(info.file_size)})")
            written.append(target)
    return written


def parse_checksums(text: str) -> dict[str, str]:
    """``sha1sum`` output (``<hex>  002/002624.mp3`` or ``<hex> *path``) -> {path: hex}."""
    digests: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([0-9a-fA-F]{40}) [ *](.+)", line.strip())
        if match:
            digests[match.group(2).strip().removeprefix("./")] = match.group(1).lower()
    return digests


@dataclass
class ClipExtraction:
    selected: int = 0  # clips chosen (all, or the first `limit` by track_id)
    extracted: int = 0
    skipped: int = 0  # already present with the right size
    verified: int = 0  # extracted clips whose SHA1 matched the zip's checksums file
    available: int = 0  # clips in the zip
    ignored: list[str] = field(default_factory=list)  # members that are not clips


def _clip_members(
    zf: zipfile.ZipFile, subset: str
) -> tuple[list[tuple[int, zipfile.ZipInfo]], list[str]]:
    """(track_id, member) of every ``fma_<subset>/NNN/NNNNNN.mp3``, and the other names."""
    pattern = re.compile(rf"fma_{re.escape(subset)}/(\d{{3}})/(\d{{6}})\.mp3")
    clips: list[tuple[int, zipfile.ZipInfo]] = []
    ignored: list[str] = []
    for info in zf.infolist():
        match = pattern.fullmatch(info.filename)
        if match and match.group(2).startswith(match.group(1)) and not info.is_dir():
            clips.append((int(match.group(2)), info))
        elif not info.is_dir():
            ignored.append(info.filename)
    clips.sort(key=lambda item: item[0])
    return clips, ignored


@dataclass
class _ExtractionPlan:
    todo: list[tuple[Path, zipfile.ZipInfo, str]]  # target, zip member, relative name
    digests: dict[str, str]  # relative name -> SHA1 of the zip's checksums file
    checksums_name: str


def _plan_extraction(
    zip_path: Path,
    audio_dir: Path,
    subset: str,
    limit: int | None,
    verify: bool,
    summary: ClipExtraction,
    log: Log,
) -> _ExtractionPlan:
    """The clips to extract (the selected ones not already present) and their checksums."""
    checksums_name = f"fma_{subset}/checksums"
    digests: dict[str, str] = {}
    with _open_zip(zip_path) as zf:
        clips, summary.ignored = _clip_members(zf, subset)
        if not clips:
            raise FetchError(
                f"{zip_path} holds no clips named fma_{subset}/NNN/NNNNNN.mp3: "
                f"is it fma_{subset}.zip?"
            )
        summary.available = len(clips)
        if verify and checksums_name in zf.NameToInfo:
            digests = parse_checksums(zf.read(checksums_name).decode("utf-8", "replace"))
        elif verify:
            log(f"{zip_path.name}: no {checksums_name}; clips are checked by CRC only")
    selected = clips[:limit] if limit is not None else clips
    summary.selected = len(selected)
    suspicious = [name for name in summary.ignored if ".." in name or name.startswith("/")]
    if suspicious:
        log(f"{zip_path.name}: ignored {len(suspicious)} unsafe member name(s): {suspicious[:3]}")
    todo = []
    for track_id, info in selected:
        relative = audio_path(Path(), track_id).as_posix()
        target = _inside(audio_dir, relative)
        if target.is_file() and target.stat().st_size == info.file_size:
            summary.skipped += 1
        else:
            todo.append((target, info, relative))
    log(
        f"{zip_path.name}: {summary.selected} of {summary.available} clips selected, "
        f"{summary.skipped} already present, {len(todo)} to extract"
    )
    return _ExtractionPlan(todo, digests, checksums_name)


class _ZipReaders:
    """One open handle of the zip per thread: each keeps its own file position."""

    def __init__(self, zip_path: Path) -> None:
        self.zip_path = zip_path
        self._local = threading.local()
        self._handles: list[zipfile.ZipFile] = []
        self._lock = threading.Lock()

    def get(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = self._local.zf = _open_zip(self.zip_path)
            with self._lock:
                self._handles.append(zf)
        return zf

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


def _extract_member(
    readers: _ZipReaders, target: Path, info: zipfile.ZipInfo, expected: str | None
) -> bool:
    """Write one clip atomically; True when it was checked against its SHA1."""
    zip_path = readers.zip_path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _temp_sibling(target) as tmp:
            actual = _copy_member(readers.get(), info, tmp)
            if expected is not None and actual != expected:
                raise ChecksumError(
                    f"{info.filename} in {zip_path}: SHA1 mismatch (expected {expected}, "
                    f"got {actual}); the clip was not written"
                )
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{zip_path}: {info.filename} is corrupt: {exc}") from exc
    except OSError as exc:  # disk full, permissions: name the file, not a traceback
        raise FetchError(f"cannot write {target}: {exc}") from exc
    return expected is not None


def _extract_all(
    zip_path: Path,
    plan: _ExtractionPlan,
    workers: int,
    summary: ClipExtraction,
    log: Log,
    log_interval: float,
) -> None:
    """Extract ``plan.todo`` on ``workers`` threads, with progress lines."""
    readers = _ZipReaders(zip_path)
    progress = ProgressLog("extracted", len(plan.todo), log, every_s=log_interval)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fma-extract")
    try:
        pending: set[Future[bool]] = {
            pool.submit(_extract_member, readers, target, info, plan.digests.get(relative))
            for target, info, relative in plan.todo
        }
        while pending:
            finished, pending = wait(pending, timeout=log_interval, return_when=FIRST_EXCEPTION)
            for future in finished:
                summary.verified += future.result()  # re-raises a worker's error
                summary.extracted += 1
            if pending:  # the summary line of extract_clips says when all are done
                progress.update(summary.extracted)
    except BaseException:
        # An error or Ctrl-C: drop the queued clips instead of extracting them all first.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        readers.close()


def extract_clips(
    zip_path: str | Path,
    audio_dir: str | Path,
    subset: str,
    limit: int | None = None,
    *,
    verify: bool = True,
    workers: int | None = None,
    log: Log = _stderr_log,
    log_interval: float = 5.0,
) -> ClipExtraction:
    """Extract ``fma_<subset>/NNN/NNNNNN.mp3`` to ``audio_dir/NNN/NNNNNN.mp3``.

    Only names of exactly that shape are written (anything else, such as
    ``../`` tricks, is ignored), and each target is checked to stay inside
    ``audio_dir``. With ``verify``, every clip written is checked against the
    zip's ``checksums`` file before it gets its real name.
    """
    zip_path, audio_dir = Path(zip_path), Path(audio_dir)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    summary = ClipExtraction()
    plan = _plan_extraction(zip_path, audio_dir, subset, limit, verify, summary, log)
    if not plan.todo:
        return summary
    start = time.monotonic()
    workers = workers or min(4, os.cpu_count() or 1)
    _extract_all(zip_path, plan, workers, summary, log, log_interval)
    log(
        f"extracted {summary.extracted} clips to {audio_dir} in {time.monotonic() - start:.1f} s"
        + (f", {summary.verified} verified against {plan.checksums_name}" if plan.digests else "")
    )
    return summary


# --------------------------------------------------------------------------- command


@dataclass
class FetchSummary:
    subset: str
    metadata_files: list[Path]
    audio_dir: Path
    downloads: list[DownloadResult]
    clips: ClipExtraction

    def __str__(self) -> str:
        fetched = sum(d.fetched_bytes for d in self.downloads)
        return (
            f"FMA {self.subset}: metadata in {self.metadata_files[0].parent} "
            f"({', '.join(p.name for p in self.metadata_files)}); "
            f"{self.clips.extracted} clips extracted, {self.clips.skipped} already present "
            f"({self.clips.selected} of {self.clips.available} selected) in {self.audio_dir}; "
            f"{human_bytes(fetched)} downloaded"
        )


def fetch_fma(
    subset: str,
    limit: int | None,
    metadata_dir: str | Path,
    audio_dir: str | Path,
    base_url: str = FMA_BASE_URL,
    download_dir: str | Path = "data/downloads",
    *,
    checksums: Mapping[str, str] | None = None,
    verify_clips: bool = True,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    workers: int | None = None,
    log: Log = _stderr_log,
    progress_stream: IO[str] | None = None,
) -> FetchSummary:
    """Download, verify and unpack FMA's metadata and one audio subset.

    ``checksums`` maps zip names to SHA1 digests (default: the published
    ``FMA_SHA1``); tests serve their own zips and pass theirs.
    """
    audio_zip = subset_zip_name(subset)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if not re.match(r"https?://", base_url):
        raise ValueError(f"--base-url must be an http(s) URL, got {base_url!r}")
    digests = FMA_SHA1 if checksums is None else checksums
    download_dir = Path(download_dir)
    for name in (METADATA_ZIP, audio_zip):
        if name not in digests:
            raise ValueError(f"no SHA1 known for {name}: cannot verify the download")

    def fetch(name: str) -> DownloadResult:
        return download(
            base_url.rstrip("/") + "/" + name,
            download_dir / name,
            digests[name],
            retries=retries,
            retry_wait=retry_wait,
            timeout=timeout,
            log=log,
            progress_stream=progress_stream,
        )

    # Metadata first: it is small and useful even if the audio download stops.
    metadata_zip = fetch(METADATA_ZIP)
    metadata_files = extract_metadata(metadata_zip.path, metadata_dir, log=log)
    clips_zip = fetch(audio_zip)
    clips = extract_clips(
        clips_zip.path, audio_dir, subset, limit, verify=verify_clips, workers=workers, log=log
    )
    return FetchSummary(subset, metadata_files, Path(audio_dir), [metadata_zip, clips_zip], clips)


__all__ = [
    "FMA_BASE_URL",
    "FMA_SHA1",
    "ChecksumError",
    "ClipExtraction",
    "DownloadResult",
    "FetchError",
    "FetchSummary",
    "download",
    "extract_clips",
    "extract_metadata",
    "fetch_fma",
    "parse_checksums",
]
