"""Progress of long work: count, rate and ETA, at most one line per interval.

:func:`rate_and_eta` is the one place rate and time left are computed and :class:`Throttle`
the one place "is a new line due?" is decided; :class:`ProgressLog` (a log line per interval)
and :class:`DownloadProgress` (a terminal bar) are built on them, and so is every loop
that reports progress (decoding, encoding the demo data, extracting clips, embedding).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

from clap_pipeline.reporting import Log


def rate_and_eta(
    done: int, total: int | None, elapsed_s: float, initial: int = 0
) -> tuple[float, float | None]:
    """Units per second since the start (``initial`` were done before it) and seconds left.

    The ETA is None while nothing was done or when the total is unknown.
    """
    rate = (done - initial) / max(elapsed_s, 1e-9)
    if total is None or rate <= 0:
        return rate, None
    return rate, max(total - done, 0) / rate


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Throttle:
    """Says when the next progress line is due: at most one per ``every_s`` seconds."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.start = self.last = clock()

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.start

    def due(self, *, final: bool = False) -> bool:
        """True (and the interval restarts) when ``every_s`` has passed or ``final`` is set."""
        now = self.clock()
        if not final and now - self.last < self.every_s:
            return False
        self.last = now
        return True


class ProgressLog:
    """Logs ``"{what}: done/total unit (rate unit/s, ETA s)"`` at most every ``every_s`` seconds.

    The last update (``done >= total``) always logs, so a run ends with its final
    count and rate. With ``log=None`` updates cost nothing.
    """

    def __init__(
        self,
        what: str,
        total: int,
        log: Log | None,
        every_s: float = 10.0,
        unit: str = "clips",
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.what, self.total, self.log, self.unit = what, total, log, unit
        self.throttle = Throttle(every_s, clock)

    def update(self, done: int) -> None:
        if self.log is None or not self.throttle.due(final=done >= self.total):
            return
        rate, eta = rate_and_eta(done, self.total, self.throttle.elapsed_s)
        self.log(
            f"{self.what}: {done}/{self.total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, ETA {float('nan') if eta is None else eta:.0f} s)"
        )


class DownloadProgress:
    """A one-line progress bar (bytes, %, MB/s, ETA) on a stream, stderr by default.

    On a terminal the line is redrawn in place a few times a second; elsewhere
    (logs, CI) a full line is printed at most every ``log_interval`` seconds so
    a 93 GiB download does not write a million lines. The rate counts only the
    bytes fetched by this process, not the part already on disk.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        initial: int = 0,
        stream: IO[str] | None = None,
        *,
        is_tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = 10.0,
    ) -> None:
        self.label = label
        self.total = total
        self.initial = initial
        self.done = initial
        self.stream = stream if stream is not None else sys.stderr
        if is_tty is None:
            isatty = getattr(self.stream, "isatty", None)
            is_tty = bool(isatty and isatty())
        self.is_tty = is_tty
        self.throttle = Throttle(0.2 if is_tty else log_interval, clock)
        self.throttle.last = float("-inf")  # the first update draws
        self.lines = 0

    def line(self) -> str:
        rate, eta = rate_and_eta(
            self.done, self.total or None, self.throttle.elapsed_s, self.initial
        )
        parts = [self.label]
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            width = 24
            filled = int(fraction * width)
            parts.append(f"[{'#' * filled}{'.' * (width - filled)}]")
            parts.append(f"{human_bytes(self.done)}/{human_bytes(self.total)}")
            parts.append(f"{fraction * 100:5.1f}%")
        else:
            parts.append(human_bytes(self.done))
        parts.append(f"{rate / 1e6:.2f} MB/s")
        if eta is not None:
            parts.append(f"ETA {human_duration(eta)}")
        return "  ".join(parts)

    def update(self, done: int) -> None:
        self.done = done
        if self.throttle.due():
            self._draw()

    def finish(self) -> None:
        self._draw()
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self.lines += 1
        if self.is_tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
