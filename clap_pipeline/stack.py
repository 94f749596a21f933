"""`make stack`: Dagster and MLflow as a team runs them, each part its own process on loopback.

- PostgreSQL (Debian's ``postgresql`` package): a cluster under ``$CLAP_DATA_DIR/postgres``
  with the databases ``dagster`` and ``mlflow``; none when ``CLAP_POSTGRES_URL`` names a
  server (the two databases are created there when missing);
- ``mlflow server``: backend store in the ``mlflow`` database, artifacts served by the
  server and stored under ``$CLAP_DATA_DIR/mlflow-artifacts``;
- Dagster on the ``dagster`` database (``dagster-postgres``), with the settings of the
  repository's ``.dagster/dagster.yaml`` (run queue, pool limits, run monitoring):
  a code location server (``dagster code-server start``), the webserver and the daemon,
  which reach the code over gRPC.

``clap-pipeline stack up|down|status|env`` (``make stack`` / ``make stack-down``).
``up`` waits until each part answers and prints the addresses and the environment to use;
``down`` stops every process the stack started (each carries ``CLAP_STACK_HOME``) and
PostgreSQL. The data directory persists: ``up`` again brings the same history back.
Ports and the host come from ``StackSettings`` (config.py); the default host is 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psutil
import yaml

from clap_pipeline.config import (
    REPO_ROOT,
    STACK_MARKER_VARIABLE,
    ConfigError,
    StackSettings,
)
from clap_pipeline.processes import ProcessRef, processes_with_env

PG_USER = "clap"  # the cluster's superuser (password in stack/postgres.password)
DATABASES = ("dagster", "mlflow")
LOCATION = "clap_pipeline"  # the code location's name in the workspace
SERVICES = ("mlflow", "code-server", "webserver", "daemon")  # started in this order
REPO_INSTANCE_YAML = REPO_ROOT / ".dagster" / "dagster.yaml"
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A part of the stack cannot start or stop; the message names the part and its log."""


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin(name: str) -> Path:
    """A PostgreSQL server binary of Debian's package (/usr/lib/postgresql/<ver>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not found:
        raise StackError(
            f"no PostgreSQL binary {name!r} under /usr/lib/postgresql/*/bin: install Debian's "
            "package (apt-get install postgresql) or set CLAP_POSTGRES_URL to an existing server"
        )
    return found[-1]


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: root runs it as the package's `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise StackError(
            "running as root, but there is no `postgres` system user to run PostgreSQL as "
            "(Debian's postgresql package creates it)"
        ) from exc


def _as_server_user(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    user = _server_user()
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _chown_to_server_user(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _password_file(s: StackSettings) -> Path:
    return s.stack_dir / "postgres.password"


def postgres_password(s: StackSettings) -> str:
    path = _password_file(s)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(24))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def postgres_base_url(s: StackSettings) -> str:
    """``postgresql://user:password@host:port`` of the server the stack uses (no database)."""
    if s.postgres_url:
        parts = urlsplit(s.postgres_url)
        return urlunsplit(("postgresql", parts.netloc, "", "", ""))
    password = quote(postgres_password(s), safe="")
    return f"postgresql://{PG_USER}:{password}@{s.host}:{s.postgres_port}"


def database_url(s: StackSettings, database: str) -> str:
    return f"{postgres_base_url(s)}/{database}"


def sqlalchemy_url(s: StackSettings, database: str) -> str:
    """For MLflow and Dagster (SQLAlchemy 2.1 would pick psycopg 3 for plain postgresql://)."""
    return database_url(s, database).replace("postgresql://", "postgresql+psycopg2://", 1)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _init_cluster(s: StackSettings) -> None:
    pg = s.postgres_dir
    if (pg / "PG_VERSION").exists():
        return
    pg.mkdir(parents=True, exist_ok=True)
    pg.chmod(0o700)
    _chown_to_server_user(pg)
    reach = _as_server_user(["test", "-w", str(pg)], cwd="/")
    if reach.returncode != 0:
        raise StackError(
            f"the `postgres` user cannot write {pg}: PostgreSQL refuses to run as root, and "
            f"one folder above it is closed to other users (chmod o+x the folders above "
            f"{pg}, or set CLAP_DATA_DIR to a folder under /tmp or /srv)"
        )
    pwfile = s.stack_dir / "postgres.initpw"
    pwfile.write_text(postgres_password(s))
    pwfile.chmod(0o600)
    _chown_to_server_user(pwfile)
    try:
        init = _as_server_user(
            [
                str(postgres_bin("initdb")),
                "-D",
                str(pg),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            cwd=str(pg),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if init.returncode != 0:
        raise StackError(f"initdb {pg} failed:\n{init.stdout}{init.stderr}")
    # TCP only (no socket in /var/run/postgresql, which another server may own).
    with (pg / "postgresql.conf").open("a") as conf:
        conf.write("\n# clap-pipeline `make stack`\nunix_socket_directories = ''\n")


def postgres_running(s: StackSettings) -> bool:
    status = _as_server_user([str(postgres_bin("pg_ctl")), "status", "-D", str(s.postgres_dir)])
    return status.returncode == 0


def start_postgres(s: StackSettings) -> None:
    _init_cluster(s)
    if postgres_running(s):
        return
    log = s.stack_dir / "logs" / "postgres.log"
    log.touch()
    _chown_to_server_user(log)
    options = f"-c listen_addresses={s.host} -p {s.postgres_port}"
    started = _as_server_user(
        [
            *[str(postgres_bin("pg_ctl")), "start", "-D", str(s.postgres_dir), "-l", str(log)],
            *["-w", "-t", "60", "-o", options],
        ],
        cwd=str(s.postgres_dir),
    )
    if started.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise StackError(
            f"PostgreSQL did not start on {s.host}:{s.postgres_port} "
            f"(CLAP_STACK_POSTGRES_PORT; log {log}):\n{started.stdout}{started.stderr}{tail}"
        )


def stop_postgres(s: StackSettings) -> None:
    if not (s.postgres_dir / "PG_VERSION").exists() or not postgres_running(s):
        return
    stopped = _as_server_user(
        [str(postgres_bin("pg_ctl")), "stop", "-D", str(s.postgres_dir), "-m", "fast", "-w"],
        cwd=str(s.postgres_dir),
    )
    if stopped.returncode != 0:
        raise StackError(f"pg_ctl stop -D {s.postgres_dir} failed: {stopped.stderr.strip()}")


def ensure_databases(s: StackSettings) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg2.connect(database_url(s, "postgres"), connect_timeout=5)
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"cannot connect to PostgreSQL at {redact(postgres_base_url(s))}: {exc}"
                ) from exc
            time.sleep(0.5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


# --------------------------------------------------------------------------- Dagster files


def instance_config(s: StackSettings) -> dict:
    """The repository's dagster.yaml (queue, pools, run monitoring) with storage in PostgreSQL."""
    config = yaml.safe_load(REPO_INSTANCE_YAML.read_text()) or {}
    config["storage"] = {"postgres": {"postgres_url": sqlalchemy_url(s, "dagster")}}
    runs = config.setdefault("concurrency", {}).setdefault("runs", {})
    runs["max_concurrent_runs"] = s.max_concurrent_runs
    return config


def workspace_config(s: StackSettings) -> dict:
    server = {"host": s.host, "port": s.code_server_port, "location_name": LOCATION}
    return {"load_from": [{"grpc_server": server}]}


def write_dagster_home(s: StackSettings) -> None:
    s.dagster_home.mkdir(parents=True, exist_ok=True)
    for name, config in (
        ("dagster.yaml", instance_config(s)),
        ("workspace.yaml", workspace_config(s)),
    ):
        tmp = s.dagster_home / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)  # holds the database password
        tmp.replace(s.dagster_home / name)


# --------------------------------------------------------------------------- the services


def service_env(s: StackSettings) -> dict[str, str]:
    """What the stack's processes (and a user's shell) need on top of the usual settings."""
    return {
        "MLFLOW_TRACKING_URI": s.mlflow_url,
        "DAGSTER_HOME": str(s.dagster_home),
        "CLAP_DATA_DIR": str(s.data_dir),
    }


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def service_command(s: StackSettings, name: str) -> list[str]:
    workspace = str(s.dagster_home / "workspace.yaml")
    host = s.host
    if name == "mlflow":
        # The backend store URI (with its password) goes by environment, not argv.
        return [
            *[sys.executable, "-m", "mlflow", "server", "--host", host],
            *["--port", str(s.mlflow_port), "--workers", "1", "--serve-artifacts"],
            *["--artifacts-destination", str(s.artifacts_dir)],
        ]
    if name == "code-server":
        return [
            *[_bin("dagster"), "code-server", "start", "-m", "clap_pipeline.definitions"],
            *["-h", host, "-p", str(s.code_server_port), "--location-name", LOCATION],
            *["--working-directory", str(REPO_ROOT)],
        ]
    if name == "webserver":
        return [_bin("dagster-webserver"), "-h", host, "-p", str(s.dagster_port), "-w", workspace]
    if name == "daemon":
        return [_bin("dagster-daemon"), "run", "-w", workspace]
    raise ValueError(f"unknown stack part {name!r}; the parts are {', '.join(SERVICES)}")


def _pid_file(s: StackSettings, name: str) -> Path:
    return s.stack_dir / f"{name}.pid"


def _log_file(s: StackSettings, name: str) -> Path:
    return s.stack_dir / "logs" / f"{name}.log"


def running_service(s: StackSettings, name: str) -> ProcessRef | None:
    """The live process recorded in ``<name>.pid`` (pid and start time), else None."""
    path = _pid_file(s, name)
    try:
        record = json.loads(path.read_text())
        ref = ProcessRef(int(record["pid"]), float(record["started"]), record["host"])
    except (OSError, ValueError, KeyError):
        return None
    return ref if ref.is_alive() else None


def start_service(s: StackSettings, name: str) -> ProcessRef:
    existing = running_service(s, name)
    if existing is not None:
        return existing
    env = {**os.environ, **service_env(s), STACK_MARKER_VARIABLE: str(s.stack_dir)}
    if name == "mlflow":
        env["MLFLOW_BACKEND_STORE_URI"] = sqlalchemy_url(s, "mlflow")
        # MLflow 3 also starts a job runner and huey workers for GenAI jobs: not needed here.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    log = _log_file(s, name)
    with log.open("ab") as out:
        out.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            service_command(s, name),
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    ref = ProcessRef.of(proc.pid)
    record = {"pid": ref.pid, "started": ref.seen_at, "host": ref.host}
    tmp = _pid_file(s, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(_pid_file(s, name))
    return ref


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _terminate_groups(pids: list[int], timeout: float) -> None:
    """SIGTERM every process group at once, SIGKILL those still there after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop_service(s: StackSettings, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
    stop_services(s, [name], timeout)


def stop_services(s: StackSettings, names: list[str], timeout: float = STOP_TIMEOUT_S) -> None:
    refs = [ref for name in names if (ref := running_service(s, name)) is not None]
    _terminate_groups([ref.pid for ref in refs], timeout)
    for name in names:
        _pid_file(s, name).unlink(missing_ok=True)


def leftover_processes(s: StackSettings) -> list[ProcessRef]:
    """Processes still carrying this stack's marker (a run worker, a server's children)."""
    return [p for p in processes_with_env(STACK_MARKER_VARIABLE, str(s.stack_dir)) if p.is_alive()]


# --------------------------------------------------------------------------- readiness


def _http(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def graphql(s: StackSettings, query: str, variables: dict | None = None) -> dict:
    """One query against the Dagster webserver's GraphQL API; its ``data``."""
    status, body = _http(f"{s.dagster_url}/graphql", {"query": query, "variables": variables or {}})
    payload = json.loads(body or b"{}")
    if status != 200 or payload.get("errors"):
        raise StackError(f"Dagster GraphQL at {s.dagster_url}: HTTP {status}: {payload}")
    return payload["data"]


LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
RELOAD_MUTATION = (
    "mutation { reloadRepositoryLocation(repositoryLocationName: "
    + json.dumps(LOCATION)
    + ") { __typename } }"
)
DAEMONS_QUERY = """{ instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy } } } }"""


def mlflow_ready(s: StackSettings) -> str | None:
    status, _ = _http(f"{s.mlflow_url}/health", timeout=5)
    return None if status == 200 else f"GET /health answered {status}"


def location_ready(s: StackSettings, reload: bool = True) -> str | None:
    """None when the webserver has loaded the code location from the code server."""
    data = graphql(s, LOCATION_QUERY)
    entries = data["workspaceOrError"].get("locationEntries", [])
    for entry in entries:
        loaded = entry.get("locationOrLoadError") or {}
        if entry["name"] == LOCATION and loaded.get("__typename") == "RepositoryLocation":
            return None
    if reload:  # still loading, or the code server came up after the webserver
        graphql(s, RELOAD_MUTATION)
    return f"code location {LOCATION!r} not loaded yet: {entries}"


def daemons_ready(s: StackSettings) -> str | None:
    statuses = graphql(s, DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    unhealthy = [d["daemonType"] for d in statuses if d["required"] and not d["healthy"]]
    return f"daemons without a heartbeat yet: {unhealthy}" if unhealthy else None


def wait_until(
    s: StackSettings, name: str, check: Callable[[], str | None], timeout: float
) -> float:
    """Poll ``check`` until it returns None; the seconds it took. Fails when the process dies."""
    start = time.monotonic()
    why = "no answer yet"
    while time.monotonic() - start < timeout:
        for part in SERVICES:  # any part that died (e.g. the code server on an import error)
            if _pid_file(s, part).exists() and running_service(s, part) is None:
                raise StackError(
                    f"{part} exited while {name} was starting; see {_log_file(s, part)} "
                    "(`make stack-down` stops the parts still running)"
                )
        try:
            result = check()
        except (OSError, StackError, ValueError, KeyError) as exc:
            result = str(exc)
        if result is None:
            return time.monotonic() - start
        why = result
        time.sleep(1.0)
    raise StackError(
        f"{name} did not answer within {timeout:.0f}s ({why}); see {_log_file(s, name)}"
    )


# --------------------------------------------------------------------------- up / down


@dataclass(frozen=True)
class PartStatus:
    name: str
    address: str
    pid: int | None


def up(s: StackSettings, timeout: float = START_TIMEOUT_S, log=print) -> list[PartStatus]:
    """Start what is not running yet and wait until every part answers."""
    (s.stack_dir / "logs").mkdir(parents=True, exist_ok=True)
    s.artifacts_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if s.postgres_url is None:
        start_postgres(s)
        log(f"PostgreSQL up ({time.monotonic() - started:.1f}s)")
    ensure_databases(s)
    write_dagster_home(s)
    checks = {
        "mlflow": lambda: mlflow_ready(s),
        "code-server": None,  # answered through the webserver below
        "webserver": lambda: location_ready(s),
        "daemon": lambda: daemons_ready(s),
    }
    for name in SERVICES:
        start_service(s, name)
    for name in SERVICES:
        check = checks[name]
        if check is not None:
            took = wait_until(s, name, check, timeout)
            log(f"{name} answers (+{took:.1f}s, {time.monotonic() - started:.1f}s in all)")
    state = {"settings": {k: str(v) for k, v in s.__dict__.items()}, "env": service_env(s)}
    (s.stack_dir / "stack.json").write_text(json.dumps(state, indent=2))
    return status(s)


def status(s: StackSettings) -> list[PartStatus]:
    parts = []
    if s.postgres_url is None:
        pid_file = s.postgres_dir / "postmaster.pid"
        up_now = pid_file.exists() and postgres_running(s)
        pid = int(pid_file.read_text().split()[0]) if up_now else None
    else:
        pid = None
    parts.append(PartStatus("postgres", redact(postgres_base_url(s)), pid))
    addresses = {
        "mlflow": s.mlflow_url,
        "code-server": f"grpc://{s.host}:{s.code_server_port}",
        "webserver": s.dagster_url,
        "daemon": f"DAGSTER_HOME={s.dagster_home}",
    }
    for name in SERVICES:
        ref = running_service(s, name)
        parts.append(PartStatus(name, addresses[name], ref.pid if ref else None))
    return parts


def down(s: StackSettings, log=print) -> list[ProcessRef]:
    """Stop the services (all at once), then PostgreSQL; the processes left (should be [])."""
    stop_services(s, list(SERVICES))
    for leftover in leftover_processes(s):  # e.g. a run worker that outlived its parent
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(leftover.pid).kill()
    if s.postgres_url is None:
        stop_postgres(s)
    left = leftover_processes(s)
    if left:
        log(f"still running after stack down: {[p.pid for p in left]}")
    return left


def env_lines(s: StackSettings) -> list[str]:
    return [f"export {k}={v}" for k, v in service_env(s).items()]


def print_status(parts: list[PartStatus], s: StackSettings) -> None:
    for part in parts:
        external = part.name == "postgres" and s.postgres_url
        state = f"pid {part.pid}" if part.pid else ("external" if external else "stopped")
        print(f"  {part.name:<12} {part.address:<48} {state}")


COMMANDS = ("up", "down", "status", "env")


def stack_command(command: str) -> int:
    """``clap-pipeline stack up|down|status|env``: the exit status (1: processes left)."""
    try:
        s = StackSettings.from_env()
        if command == "up":
            parts = up(s)
            print(f"\nThe stack is up (data in {s.data_dir}, logs in {s.stack_dir / 'logs'}):")
            print_status(parts, s)
            print("\nUse it with:")
            print("\n".join(env_lines(s)))
        elif command == "down":
            left = down(s)
            print(f"The stack is down; {len(left)} of its processes left.")
            return 1 if left else 0
        elif command == "status":
            print_status(status(s), s)
        else:
            print("\n".join(env_lines(s)))
    except (ConfigError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
