"""The project against the parts a team runs: PostgreSQL, an MLflow tracking server, Dagster.

`clap-pipeline stack up` starts a real PostgreSQL cluster (Debian's package;
CI installs it), `mlflow server` on it with served artifacts, and Dagster's code server,
webserver and daemon on `dagster-postgres`, all on free loopback ports. The daemon's
`new_tracks_sensor` sees a small FMA-format collection and queues one `retrain` run,
which the daemon launches through the code server; the test then reads what landed in
PostgreSQL, what the tracking server serves over REST, loads the champion as a pyfunc
model through HTTP from a fresh process, and brings the stack down and up again.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from clap_pipeline import stack
from clap_pipeline.config import REPO_ROOT, StackSettings
from clap_pipeline.demo.collection import write_demo_dataset
from clap_pipeline_tests.stack.stack_fixtures import (
    free_ports,
    get_json,
    settings_of,
    stack_command,
    stack_data_dir,
    stack_env,
    teardown,
    wait_for,
)

pytestmark = pytest.mark.slow  # real servers: minutes, not seconds
MAX_EPOCHS = 3
RUNS_QUERY = """{ runsOrError(filter: {pipelineName: "retrain"}) { ... on Runs {
  results { runId status } } } }"""


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator:
    data_dir = stack_data_dir()
    write_demo_dataset(data_dir, n_tracks=80, seed=0, log=None)
    run_config = yaml.safe_load((REPO_ROOT / "scripts" / "tiny_model_run_config.yaml").read_text())
    run_config["ops"]["clap_model"]["config"].update(
        max_epochs=MAX_EPOCHS, batch_size=16, cpu_threads=1
    )
    config_path = data_dir / "retrain.yaml"
    config_path.write_text(yaml.safe_dump(run_config))
    env = stack_env(
        data_dir, {"CLAP_MODEL": str(tiny_model_dir), "CLAP_RETRAIN_RUN_CONFIG": str(config_path)}
    )
    try:
        out = stack_command("up", env)
        yield env, settings_of(env), out
    finally:
        teardown(env, data_dir)


def _retrain_runs(s: StackSettings) -> list[dict]:
    return stack.graphql(s, RUNS_QUERY)["runsOrError"]["results"]


def _query(s: StackSettings, database: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(stack.database_url(s, database))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def retrained(running_stack) -> dict:
    """The daemon's sensor queued `retrain`; the daemon launched it through the code server."""
    _, s, _ = running_stack

    def finished() -> list[dict]:
        runs = _retrain_runs(s)
        return runs if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED") else []

    (run,) = wait_for(finished, 420, "one retrain run finished", interval=5)
    log = s.stack_dir / "logs"
    assert run["status"] == "SUCCESS", f"retrain {run['runId']}: see the Dagster UI / {log}"
    return run


def test_the_chain_runs_through_the_stack_and_lands_in_postgres(
    running_stack, retrained: dict
) -> None:
    env, s, out = running_stack
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{s.mlflow_port}" in out
    assert f"export DAGSTER_HOME={s.dagster_home}" in out
    # Nothing listens beyond loopback.
    for part in stack.status(s):
        assert part.pid is not None, part
    listening = {
        c.laddr.port: c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }
    for port in (s.postgres_port, s.mlflow_port, s.dagster_port, s.code_server_port):
        # (an IPv6 socket bound to the IPv4 loopback shows it mapped)
        assert listening.get(port) in ("127.0.0.1", "::ffff:127.0.0.1"), (port, listening)

    run = retrained

    # PostgreSQL: Dagster's runs table, MLflow's run with one val_loss per epoch.
    rows = _query(s, "dagster", "SELECT run_id, status FROM runs WHERE pipeline_name = 'retrain'")
    assert rows == [(run["runId"], "SUCCESS")]
    (mlflow_run_id, mlflow_status), *others = _query(
        s,
        "mlflow",
        "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e "
        "ON r.experiment_id = e.experiment_id WHERE e.name = 'clap-fma'",
    )
    assert others == [] and mlflow_status == "FINISHED"
    steps = _query(
        s,
        "mlflow",
        "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_loss' ORDER BY step",
        (mlflow_run_id,),
    )
    assert [step for (step,) in steps] == list(range(1, MAX_EPOCHS + 1))
    (alias,) = _query(s, "mlflow", "SELECT alias, name FROM registered_model_aliases")
    assert alias == ("champion", "clap-fma")

    # The tracking server serves the same over REST, and the artifacts it stores.
    api = f"{s.mlflow_url}/api/2.0/mlflow"
    champion = get_json(
        f"{api}/registered-models/alias", {"name": "clap-fma", "alias": "champion"}
    )["model_version"]
    assert champion["run_id"] == mlflow_run_id
    assert champion["source"].startswith("mlflow-artifacts:/"), champion["source"]
    history = get_json(
        f"{api}/metrics/get-history", {"run_id": mlflow_run_id, "metric_key": "val_loss"}
    )["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, MAX_EPOCHS + 1))
    listed = get_json(f"{api}/artifacts/list", {"run_id": mlflow_run_id, "path": "pyfunc"})
    epoch = {tag["key"]: tag["value"] for tag in champion["tags"]}["epoch"]
    assert champion["source"].endswith(f"/pyfunc/epoch-{epoch}")
    assert [f["path"] for f in listed["files"]] == [f"pyfunc/epoch-{epoch}"]
    assert list(s.artifacts_dir.rglob("MLmodel")), f"no pyfunc model under {s.artifacts_dir}"

    # A fresh process loads the champion through HTTP only and embeds two texts.
    code = (
        "import json, mlflow, numpy as np, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/clap-fma@champion')\n"
        "e = m.predict(pd.DataFrame({'text': ['folk guitar', 'loud techno']}))\n"
        "print(json.dumps({'shape': list(e.shape), 'norms': np.linalg.norm(e, axis=1).tolist(),"
        " 'cos': float(e[0] @ e[1])}))\n"
    )
    fresh_env = {**env, "MLFLOW_TRACKING_URI": s.mlflow_url}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=fresh_env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"][0] == 2 and result["shape"][1] > 0
    assert all(abs(n - 1.0) < 1e-4 for n in result["norms"])
    assert result["cos"] < 0.9999  # two texts, two embeddings

    # Down: no process of the stack is left. Up again: the same history comes back.
    pids = [part.pid for part in stack.status(s) if part.pid]
    stack_command("down", env)
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]
    assert stack.leftover_processes(s) == []
    assert all(part.pid is None for part in stack.status(s))
    stack_command("up", env)
    assert [r["runId"] for r in _retrain_runs(s)] == [run["runId"]]
    again = get_json(f"{api}/runs/get", {"run_id": mlflow_run_id})["run"]
    assert again["info"]["status"] == "FINISHED"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def _launch_decode(s: StackSettings) -> str | None:
    """Queue one `decode_waveforms` run (folder 000, already decoded: quick)."""
    params = {
        "selector": {
            "repositoryLocationName": stack.LOCATION,
            "repositoryName": "__repository__",
            "jobName": "decode_waveforms",
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "000"}]},
        "runConfigData": {"execution": {"config": {"in_process": {}}}},
    }
    launched = stack.graphql(s, LAUNCH_RUN, {"p": params})["launchRun"]
    if launched["__typename"] == "PipelineNotFoundError":
        return None  # the webserver has not reloaded the restarted code server yet
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _run_status(s: StackSettings, run_id: str) -> str:
    return stack.graphql(s, RUN_STATUS, {"id": run_id})["runOrError"]["status"]


def test_the_stack_rides_out_restarts_of_its_parts(running_stack, retrained: dict) -> None:
    _, s, _ = running_stack
    # The code server restarts: the webserver reconnects by itself (no reload asked), and
    # the run launched below goes through the new server (webserver and daemon).
    old = stack.running_service(s, "code-server")
    stack.stop_service(s, "code-server")
    new = stack.start_service(s, "code-server")
    assert new.pid != old.pid
    stack.wait_until(s, "code-server", lambda: stack.location_ready(s, reload=False), 180)

    # PostgreSQL restarts under the daemon: it carries on, and queued runs still run.
    daemon = stack.running_service(s, "daemon")
    stack.stop_postgres(s)
    assert not stack.postgres_running(s)
    stack.start_postgres(s)
    run_id = wait_for(lambda: _try_launch(s), 90, "a run queued after PostgreSQL restarted")
    status = wait_for(
        lambda: (st := _run_status(s, run_id)) in ("SUCCESS", "FAILURE", "CANCELED") and st,
        240,
        f"decode_waveforms run {run_id} finished",
        interval=3,
    )
    assert status == "SUCCESS", f"run {run_id}: see {s.stack_dir / 'logs'}"
    assert stack.running_service(s, "daemon") == daemon  # the same process throughout
    assert stack.daemons_ready(s) is None


def _try_launch(s: StackSettings) -> str | None:
    try:
        return _launch_decode(s)
    except stack.StackError:
        return None  # the webserver's first query after the restart may still fail


def _val_loss_steps(s: StackSettings, run_id: str) -> list[int]:
    rows = _query(
        s,
        "mlflow",
        "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'val_loss' ORDER BY step",
        (run_id,),
    )
    return [step for (step,) in rows]


def _training_runs(s: StackSettings) -> dict[str, str]:
    return dict(_query(s, "mlflow", "SELECT run_uuid, status FROM runs"))


def test_a_training_rides_out_a_restart_of_the_tracking_server(
    running_stack, retrained: dict
) -> None:
    env, s, _ = running_stack
    before = _training_runs(s)
    epochs = 4
    command = [sys.executable, "-m", "clap_pipeline.training", "--max-epochs", str(epochs)]
    command += ["--patience", str(epochs), "--cpu-threads", "1", "--quiet"]
    train_env = {**env, "MLFLOW_TRACKING_URI": s.mlflow_url, "DAGSTER_HOME": str(s.dagster_home)}
    proc = subprocess.Popen(
        command, env=train_env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # Once the first epoch is in PostgreSQL, restart the tracking server under it.
        new_run = wait_for(
            lambda: next((r for r in _training_runs(s) if r not in before), None),
            180,
            "the training's MLflow run",
        )
        wait_for(lambda: _val_loss_steps(s, new_run), 180, "epoch 1's val_loss", interval=0.5)
        assert proc.poll() is None, "the training ended before the restart: lengthen it"
        stack.stop_service(s, "mlflow")
        assert stack.running_service(s, "mlflow") is None
        stack.start_service(s, "mlflow")
        stack.wait_until(s, "mlflow", lambda: stack.mlflow_ready(s), 120)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:  # MLflow's client retried through the restart
        assert _val_loss_steps(s, new_run) == list(range(1, epochs + 1))
    else:  # or it failed clearly, and the next training resumes the same run
        assert b"MLflow tracking store" in err and s.mlflow_url.encode() in err, err[-2000:]
        rerun = subprocess.run(command, env=train_env, cwd=REPO_ROOT, capture_output=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _training_runs(s)[new_run] == "FINISHED"
    assert "RUNNING" not in _training_runs(s).values()


def _kill_launch(proc: subprocess.Popen) -> None:
    """torchrun starts each rank in a session of its own: kill the ranks, then torchrun."""
    for child in [*psutil.Process(proc.pid).children(recursive=True), proc]:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            child.kill()
    proc.wait()


def test_two_torchrun_nodes_make_one_run_and_resume_after_losing_one(
    running_stack, retrained: dict
) -> None:
    """Two `torchrun --nnodes 2` launches (one CPU process each, gloo, c10d on loopback).

    Node 1 is killed after the first epoch: node 0 fails naming what happened; the same two
    launches again resume the same MLflow run, which ends with world size 2 and every epoch.
    """
    env, s, _ = running_stack
    before = _training_runs(s)
    epochs = 4
    train_env = {**env, "MLFLOW_TRACKING_URI": s.mlflow_url, "OMP_NUM_THREADS": "1"}

    def launch(rank: int, port: int) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"clap-{port}",
            "--rdzv-conf", f"is_host={int(rank == 0)}",
            "-m", "clap_pipeline.training", "--max-epochs", str(epochs), "--patience",
            str(epochs), "--device", "cpu", "--cpu-threads", "1", "--no-system-metrics",
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            env=train_env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    (port,) = free_ports(1)
    node0, node1 = launch(0, port), launch(1, port)
    try:
        seen = []
        for line in node0.stdout:
            seen.append(line)
            if line.startswith("epoch 1 done"):
                break
        assert any(line.startswith("epoch 1 done") for line in seen), "".join(seen)[-3000:]
        (new_run,) = [r for r in _training_runs(s) if r not in before]
        # Until rank 0 has saved the resume state of epoch 1, then node 1 dies.
        resume_file = s.data_dir / "checkpoints" / new_run / "resume.json"
        wait_for(resume_file.exists, 60, f"epoch 1's resume state {resume_file}", interval=0.1)
        _kill_launch(node1)
        failed = "".join(seen) + node0.communicate(timeout=180)[0]
    finally:
        for proc in (node0, node1):
            if proc.poll() is None:
                _kill_launch(proc)
    assert node0.returncode != 0
    assert "lost the other ranks" in failed and "Start the same launch again" in failed, failed[
        -3000:
    ]

    (port,) = free_ports(1)
    reruns = [launch(0, port), launch(1, port)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in reruns]
    finally:
        for proc in reruns:
            if proc.poll() is None:
                _kill_launch(proc)
    for proc, out in zip(reruns, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    assert f"resuming MLflow run {new_run}" in outputs[0], outputs[0][-3000:]
    assert [r for r in _training_runs(s) if r not in before] == [new_run]
    run = get_json(f"{s.mlflow_url}/api/2.0/mlflow/runs/get", {"run_id": new_run})["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert run["info"]["status"] == "FINISHED" and params["world_size"] == "2"
    assert _val_loss_steps(s, new_run) == list(range(1, epochs + 1))
