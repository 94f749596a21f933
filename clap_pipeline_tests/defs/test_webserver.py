"""Start the real dagster-webserver on the project's workspace and ask GraphQL for the assets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPECTED_ASSETS = {"tracks", "prompts", "waveforms", "clap_model", "evaluation", "track_embeddings"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_webserver_serves_the_asset_graph(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "CLAP_DATA_DIR": str(tmp_path / "data"),
    }
    (tmp_path / "dagster_home").mkdir()
    webserver = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"webserver exited early:\n{proc.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "webserver did not start within 120 s"
                time.sleep(0.5)
        # The code location loads asynchronously; poll until it reports the assets.
        keys: set[str] = set()
        while time.monotonic() < deadline:
            result = _graphql(port, "{ assetNodes { assetKey { path } groupName } }")
            nodes = (result.get("data") or {}).get("assetNodes") or []
            keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
            if keys >= EXPECTED_ASSETS:
                break
            time.sleep(1)
        assert keys >= EXPECTED_ASSETS, f"asset keys served: {sorted(keys)}"
        errors = _graphql(
            port,
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }",
        )
        entries = errors["data"]["workspaceOrError"]["locationEntries"]
        assert [e["locationOrLoadError"]["__typename"] for e in entries] == ["RepositoryLocation"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
