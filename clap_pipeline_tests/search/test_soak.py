"""The soak's short version: 30 s, 10 Locust users, a champion swap inside (benchmarks/soak.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("ffmpeg")
def test_short_soak_has_no_failed_request_and_keeps_every_feedback_row(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py")]
    command += ["--duration", "30", "--users", "10", "--tracks", "40", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "soak passed: 0 failed requests" in output
    lines = output.splitlines()
    for endpoint in ("/api/search hybrid", "/api/search/audio", "/api/feedback"):
        (row,) = [line for line in lines if line.startswith(endpoint + " ")]
        requests, failed = row[36:].split()[:2]
        assert int(requests) > 0 and failed == "0", row
    found = re.search(r"feedback: (\d+) rows accepted, (\d+) of them in DuckDB", output)
    assert found is not None and int(found[1]) > 0 and found[1] == found[2], output[-3000:]
    assert "champion swap to version 2" in output and "NOT served" not in output
