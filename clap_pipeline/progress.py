"""A progress logger for long loops: count, rate and ETA, rate-limited to one line per interval."""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressLog:
    """Logs ``"{what}: done/total unit (rate unit/s, ETA s)"`` at most every ``every_s`` seconds.

    The last update (``done >= total``) always logs, so a run ends with its final
    count and rate. With ``log=None`` updates cost one clock read.
    """

    def __init__(
        self,
        what: str,
        total: int,
        log: Callable[[str], None] | None,
        every_s: float = 10.0,
        unit: str = "clips",
    ):
        self.what, self.total, self.log, self.every_s, self.unit = what, total, log, every_s, unit
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.log is None or (now - self.last < self.every_s and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        self.log(
            f"{self.what}: {done}/{self.total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, ETA {eta:.0f} s)"
        )
