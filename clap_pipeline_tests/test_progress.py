"""Rate, ETA and the one-line-per-interval rule that every progress report shares."""

from __future__ import annotations

import math

from clap_pipeline.progress import ProgressLog, Throttle, rate_and_eta


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta() -> None:
    assert rate_and_eta(30, 120, 10.0) == (3.0, 30.0)
    assert rate_and_eta(70, 100, 2.0, initial=50) == (10.0, 3.0)  # resumed at 50
    assert rate_and_eta(0, 100, 5.0) == (0.0, None)  # nothing done yet: no ETA
    assert rate_and_eta(10, None, 5.0) == (2.0, None)  # unknown total
    assert rate_and_eta(12, 10, 1.0)[1] == 0.0  # past the total: nothing left


def test_throttle_allows_one_line_per_interval() -> None:
    clock = FakeClock()
    throttle = Throttle(5.0, clock)
    assert not throttle.due()
    clock.now += 5.0
    assert throttle.due() and not throttle.due()
    assert throttle.due(final=True)
    assert throttle.elapsed_s == 5.0


def test_progress_log_lines() -> None:
    clock, lines = FakeClock(), []
    progress = ProgressLog("embedded", 100, lines.append, every_s=10.0, clock=clock)
    clock.now += 4.0
    progress.update(20)  # before the interval: quiet
    clock.now += 6.0
    progress.update(50)
    clock.now += 1.0
    progress.update(100)  # the last update always logs
    assert lines == [
        "embedded: 50/100 clips (5.0 clips/s, ETA 10 s)",
        "embedded: 100/100 clips (9.1 clips/s, ETA 0 s)",
    ]
    quiet = ProgressLog("x", 1, None, clock=clock)
    quiet.update(1)  # no log: nothing to do
    assert math.isclose(progress.throttle.elapsed_s, 11.0)
