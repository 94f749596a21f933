"""Search results for people and programs: an aligned table, JSON, M3U playlists."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from clap_pipeline.search.engine import Result
from clap_pipeline.storage import write_text_atomic
from clap_pipeline.tables import UNPRINTABLE_IN_JSON, Table, printable


# Characters a terminal acts on instead of showing: C0/C1 controls (ESC starts colour and
# cursor sequences, CSI is \x9b), DEL, and the bidirectional overrides that reorder text.
def _cell(value: object, width: int = 40) -> str:
    text = "" if value is None else printable(" ".join(str(value).split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def clock(seconds: float) -> str:
    """``85.0`` -> ``"1:25"``; an hour or more ``"1:02:05"``."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_table(hits: Sequence[Result]) -> str:
    """Rank, names, genre, score, and where the track matches ("at 1:25") when known."""
    moments = any(h.moment is not None for h in hits)
    rows = [
        (h.rank, _cell(h.title), _cell(h.artist), _cell(h.genre, 24), f"{h.score:.4f}")
        + ((f"at {clock(h.moment.start_s)}" if h.moment else "",) if moments else ())
        for h in hits
    ]
    header = ("rank", "title", "artist", "genre", "score") + (("moment",) if moments else ())
    # Numbers (rank, score) right-aligned.
    return Table(header, rows, right=frozenset({0, 4})).text()


def results_json(hits: Sequence[Result]) -> str:
    # json escapes C0 controls itself; C1 controls and bidi overrides are valid JSON text
    # that a terminal would act on, so they are written as \u escapes too.
    text = json.dumps([asdict(h) for h in hits], indent=2, ensure_ascii=False)
    return UNPRINTABLE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def m3u_text(hits: Sequence[Result]) -> str:
    """Extended M3U: ``#EXTINF:<seconds>,<artist> - <title>`` then the absolute file path.

    A result with a moment gets ``#EXTVLCOPT:start-time=<seconds>`` before its path: VLC
    (and players that read its options) start the track where the query is heard.
    """
    lines = ["#EXTM3U"]
    for h in hits:
        seconds = round(h.file_duration_s) if h.file_duration_s is not None else -1
        label = " - ".join(_cell(v, 200) for v in (h.artist, h.title) if v) or f"track {h.track_id}"
        lines.append(f"#EXTINF:{seconds},{label}")
        if h.moment is not None:
            lines.append(f"#EXTVLCOPT:start-time={h.moment.start_s:g}")
        lines.append(str(Path(h.audio_path).absolute()))
    return "\n".join(lines) + "\n"


def m3u_target(path: str | Path) -> Path:
    """The playlist path, refused when something other than a regular file is there.

    The playlist is written aside and renamed into place, which would replace a symlink,
    a FIFO or a device node (``/dev/stdout``) instead of writing to it: such targets,
    folders and an empty path are refused, so the link and what it points to stay as
    they are. An existing regular file is replaced.
    """
    if not str(path).strip():
        raise ValueError("--m3u is empty: give the playlist's file name, e.g. --m3u warm.m3u")
    target = Path(path).expanduser()
    if target.is_symlink():
        raise ValueError(
            f"--m3u {target} is a symbolic link (to {os.readlink(target)}): refusing to replace "
            "it; give the path of a regular file"
        )
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise ValueError(f"--m3u {target} is {kind}: give the path of a regular file")
    return target


def write_m3u(path: str | Path, hits: Sequence[Result]) -> Path:
    return write_text_atomic(m3u_target(path), m3u_text(hits))
