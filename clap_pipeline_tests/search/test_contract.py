"""The API's contract under a schema-driven fuzzer: Schemathesis, all checks, the real server.

Schemathesis reads the served ``/openapi.json``, generates valid and invalid requests for
every operation (examples, boundary values, fuzzed values and stateful sequences) and
checks each response against the schema: status codes documented, bodies and headers
conforming, no server error, valid requests accepted, invalid ones rejected. The example
count is bounded so the run adds well under a minute to CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clap_pipeline_tests.serve_fixtures import make_collection, running_server, write_window_store

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 10
SEED = 22


def test_schemathesis_finds_no_contract_failure(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ffmpeg: str
) -> None:
    collection = make_collection(tmp_path_factory.mktemp("contract") / "data", ffmpeg)
    write_window_store(collection, tiny_model_dir)  # results carry moments; start_s works
    st = Path(sys.executable).with_name("schemathesis")
    reports = collection.data_dir / "schemathesis"
    with running_server(collection, tiny_model_dir) as base:
        run = subprocess.run(
            [
                str(st),
                *("--config-file", str(CONFIG)),
                "run",
                f"{base}/openapi.json",
                *("--checks", "all"),
                *("--max-examples", str(MAX_EXAMPLES)),
                *("--seed", str(SEED)),
                *("--request-timeout", "30"),
                "--continue-on-failure",
                "--no-color",
                *("--report", "junit", "--report-dir", str(reports)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=collection.data_dir,  # its example database (.schemathesis/) stays in tmp
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 100, output[-8000:]
    assert "Failures:" not in output and "Errors:" not in output, output[-8000:]
