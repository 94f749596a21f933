"""Soak: the real search service under a Locust load, with a champion swap in the middle.

Makes a collection offline (``search_collection.py``: demo-data clips, the tiny CLAP as
version 1 of `clap-fma`, the champion), starts ``clap-pipeline serve`` on loopback and runs
Locust headless (``soak_locustfile.py``): searches in every mode with and without
filters, "more like this", audio queries (an MP3 upload), audio streaming with Range
requests and feedback posts. At ``--swap-at`` of the run another model is registered as
version 2, made the champion, and `track_embeddings` is rebuilt with it: the service
must swap to it without a failed request. Then it prints, per endpoint, requests,
failures and p50/p95; the service's RSS after warm-up and at the end; and whether every
feedback row the service accepted is in DuckDB.

Targets: 0 failed requests (5xx, timeouts, connection errors: any non-2xx answer counts),
RSS growth <= 10 %, every accepted feedback row present, the swap seen. Exit status 1
when one is missed.

    python benchmarks/soak.py                       # 5 min, 50 users, SQLite MLflow store
    make stack && python benchmarks/soak.py --tracking-uri http://127.0.0.1:5050
    python benchmarks/soak.py --duration 30 --users 10 --tracks 40   # the test's version
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_collection as sc

from clap_pipeline.feedback import read_feedback
from clap_pipeline.search.index import read_collection

LOCUSTFILE = Path(__file__).with_name("soak_locustfile.py")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: Path, n_tracks: int, tracking_uri: str) -> tuple[Path, sc.Clips, Path]:
    """The collection with version 1 served; returns the data folder, clips, model 2."""
    from clap_pipeline.demo.collection import write_demo_dataset
    from clap_pipeline.model.tiny import save_tiny_model

    write_demo_dataset(out / "source", n_tracks, seed=0, renderer="synth", log=None)
    data = out / "data"
    sc.load_tracks(data, out / "source" / "fma_metadata")
    clips = sc.decode_clips(out / "source" / "fma_audio", data)
    first = save_tiny_model(out / "models" / "v1", seed=0)
    second = save_tiny_model(out / "models" / "v2", seed=1)
    version = sc.register(tracking_uri, first, 1)
    sc.write_index(data, clips, sc.embed(first, clips.windows), version)
    return data, clips, second


def write_plan(out: Path, data: Path, clips: sc.Clips) -> Path:
    catalog = read_collection(data / "clap.duckdb").catalog
    plan = {
        "track_ids": clips.track_ids.tolist(),
        "genres": sorted({g for names in catalog.genre_lists for g in names}),
        "artists": sorted({a for a in catalog.artists if a})[:20],
        "upload": str(clips.paths[0]),
    }
    path = out / "plan.json"
    path.write_text(json.dumps(plan))
    return path


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(1.0):
            try:
                self.samples.append((time.monotonic() - start, self.process.memory_info().rss))
            except psutil.Error:
                return


def swap(base: str, data: Path, clips: sc.Clips, model: Path, tracking_uri: str) -> dict:
    """Register ``model`` as the champion, rebuild `track_embeddings`, wait for the swap."""
    started = time.monotonic()
    version = sc.register(tracking_uri, model, 2)
    sc.write_index(data, clips, sc.embed(model, clips.windows), version)
    written = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as http:
        while http.get("/api/health").json()["model_version"] != version:
            if time.monotonic() - written > 120:
                return {"version": version, "swapped": False}
            time.sleep(0.5)
    served = time.monotonic()
    return {
        "version": version,
        "swapped": True,
        "build_s": written - started,
        "swap_s": served - written,
    }


def start_server(data: Path, tracking_uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "CLAP_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Every Locust user shares 127.0.0.1: one client for the per-client limit.
        "CLAP_FEEDBACK_PER_MINUTE": "1000000",
    }
    cli = Path(sys.executable).with_name("clap-pipeline")
    command = [str(cli), "serve", "--port", str(port), "--poll-s", "1"]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server was not healthy in 300 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def endpoint_rows(stats_csv: Path) -> list[dict[str, str]]:
    with stats_csv.open() as f:
        return list(csv.DictReader(f))


def report(rows: list[dict], rss: list[tuple[float, int]], duration: float) -> tuple[int, float]:
    print(f"{'endpoint':<36}{'requests':>10}{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}")
    failed = 0
    for row in rows:
        name = row["Name"] if row["Name"] != "Aggregated" else "all"
        failed += int(row["Failure Count"]) if name != "all" else 0
        print(
            f"{name:<36}{row['Request Count']:>10}{row['Failure Count']:>8}"
            f"{row['50%']:>9}{row['95%']:>9}"
        )
    warm = [r for t, r in rss if t >= 0.1 * duration] or [r for _, r in rss]
    growth = warm[-1] / warm[0] - 1
    print(
        f"service RSS: {warm[0] / 2**20:.0f} MiB after warm-up (10 % of the run), "
        f"{warm[-1] / 2**20:.0f} MiB at the end, peak {max(r for _, r in rss) / 2**20:.0f} MiB: "
        f"growth {growth:+.1%} (target <= +10 %)"
    )
    return failed, growth


def check_feedback(data: Path, accepted_json: Path) -> bool:
    accepted = json.loads(accepted_json.read_text())
    stored = {(r.query, r.track_id, r.relevant) for r in read_feedback(data / "clap.duckdb")}
    missing = [a for a in accepted if (a["query"], a["track_id"], a["relevant"]) not in stored]
    print(
        f"feedback: {len(accepted)} rows accepted, {len(accepted) - len(missing)} of them in "
        f"DuckDB search_feedback ({len(stored)} rows there)"
    )
    return not missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=300, help="seconds of load")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started a second")
    parser.add_argument("--tracks", type=int, default=120)
    parser.add_argument("--swap-at", type=float, default=0.4, help="share of the run")
    parser.add_argument("--tracking-uri", help="MLflow store (default: SQLite in --out)")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clap-soak-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
        print(f"load average {os.getloadavg()} on {os.cpu_count()} cores; MLflow {uri}")
        t0 = time.monotonic()
        data, clips, second = prepare(out, args.tracks, uri)
        plan = write_plan(out, data, clips)
        print(
            f"collection: {len(clips.track_ids)} tracks, prepared in {time.monotonic() - t0:.0f} s"
        )
        server, base = start_server(data, uri, out / "serve.log")
        sampler = RssSampler(server.pid)
        sampler.start()
        accepted = out / "accepted.json"
        locust = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("locust")),
                *("-f", str(LOCUSTFILE), "--headless", "--only-summary"),
                *("-u", str(args.users), "-r", str(args.spawn_rate)),
                *("-t", f"{args.duration}s", "--host", base, "--csv", str(out / "soak")),
                *("--loglevel", "WARNING", "--stop-timeout", "30"),
            ],
            env={**os.environ, "SOAK_PLAN": str(plan), "SOAK_ACCEPTED": str(accepted)},
            stdout=(out / "locust.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(args.swap_at * args.duration)
        swapped = swap(base, data, clips, second, uri)
        locust.wait(timeout=args.duration + 300)
        writer = httpx.get(f"{base}/api/health", timeout=30).json()["feedback"]
        sampler.stop.set()
        server.terminate()
        server.wait(timeout=60)
        print(
            f"{args.users} users for {args.duration} s against {base}; champion swap to "
            f"version {swapped['version']} at {args.swap_at:.0%}: "
            + (
                f"embeddings rebuilt in {swapped['build_s']:.1f} s, served "
                f"{swapped['swap_s']:.1f} s later"
                if swapped["swapped"]
                else "NOT served within 120 s"
            )
        )
        failed, growth = report(
            endpoint_rows(out / "soak_stats.csv"), sampler.samples, args.duration
        )
        feedback_ok = check_feedback(data, accepted)
        print(
            f"feedback writer: {writer['rows']} posts in {writer['batches']} transactions "
            f"(largest {writer['largest_batch']}), {writer['write_s']:.1f} s writing"
        )
        print(f"load average {os.getloadavg()} at the end")
        ok = failed == 0 and growth <= 0.10 and feedback_ok and swapped["swapped"]
        print(f"soak {'passed' if ok else 'FAILED'}: {failed} failed requests")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
