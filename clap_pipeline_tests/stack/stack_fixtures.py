"""A real stack for the tests: PostgreSQL, `mlflow server`, Dagster's services on free ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from clap_pipeline.config import REPO_ROOT, StackSettings

PORT_VARIABLES = (
    "CLAP_STACK_POSTGRES_PORT",
    "CLAP_STACK_MLFLOW_PORT",
    "CLAP_STACK_DAGSTER_PORT",
    "CLAP_STACK_CODE_SERVER_PORT",
)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stack_data_dir() -> Path:
    """A folder the `postgres` user can reach (pytest's tmp_path is closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="clap-stack-test-"))
    path.chmod(0o755)
    return path


def stack_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "CLAP_POSTGRES_URL")
    }
    env.update(dict(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES))), strict=True)))
    env.update(
        CLAP_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.update(extra or {})
    return env


def stack_command(command: str, env: dict[str, str], timeout: float = 300) -> str:
    """``clap-pipeline stack <command>``; its output (fails the test on error)."""
    done = subprocess.run(
        [sys.executable, "-m", "clap_pipeline.cli", "stack", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"stack {command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def settings_of(env: dict[str, str]) -> StackSettings:
    return StackSettings.from_env(env)


def get_json(url: str, params: dict[str, str] | None = None) -> dict:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(check, timeout: float, what: str, interval: float = 2.0):
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f}s (last: {last!r})")


def teardown(env: dict[str, str], data_dir: Path) -> None:
    """Stack down (whatever a test left running), then remove the folder."""
    subprocess.run(
        [sys.executable, "-m", "clap_pipeline.cli", "stack", "down"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
