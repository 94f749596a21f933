"""Search service speed: top-k at 100,000 and 1,000,000 tracks, and the real server over loopback.

Part 1, top-k alone (``--sizes``, default 100,000 and 1,000,000 x 512): the server's
``VectorIndex`` (faiss IVF with calibrated ``nprobe``, see clap_pipeline/search/vector_index.py)
against the exact scan the CLI uses (``search.top_k``: numpy matmul + partition), query by
query and interleaved so both see the same machine load; recall@10 of the index against
the exact result. The embeddings are synthetic: unit vectors around 1,000 centres (real
CLAP embeddings cluster by genre and sound; uniform random vectors have no structure for
any index to use), queries are fresh draws from the same mixture.

Part 2, the server (``--serve-n`` tracks, default 100,000 x 512): a DuckDB with `tracks` and
`track_embeddings` written by the project's writer, a tiny CLAP with 512-d projections
(offline; the real text tower costs more per query, see the README), ``clap-pipeline serve``
on 127.0.0.1, then ``/api/search`` (query embedding + top-k + metadata) timed from the
client: 50 sequential requests and ``--requests`` with concurrency 8, after a warm-up,
bounded by ``--deadline-s``. Reference in the same run: ``clap-pipeline search`` (one
process per query, what the CLI costs today) on the same data and model.

Targets: top-k p95 <= 10 ms at 100,000 with recall@10 >= 0.99; /api/search p95 <= 50 ms.
Usage: python benchmarks/bench_serve.py [--sizes 100000 1000000] [--serve-n 100000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from clap_pipeline.search.query import top_k
from clap_pipeline.search.vector_index import build_vector_index, exact_top_k_batch, recall_at_k
from clap_pipeline.training.model import save_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import write_collection as write_synthetic_collection

DIM = 512
CENTRES = 1_000
QUERY_NOISE = 1.5
WORDS = ["warm", "lo-fi", "guitar", "dark", "ambient", "folk", "upbeat", "piano", "jazz", "noise"]


def ms(seconds: list[float]) -> tuple[float, float]:
    values = np.array(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def clustered(
    n: int, seed: int, centres: np.ndarray, noise: float = 1.0, chunk: int = 100_000
) -> np.ndarray:
    """``n`` unit rows around ``centres``, generated in chunks (1M x 512 is 2 GB).

    ``noise`` 1.0: a row's cosine to its centre is about 0.7; queries get more noise
    (``QUERY_NOISE``), so they sit between clusters as text does among audio embeddings.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = centres[rng.integers(0, len(centres), stop - start)]
        rows = rows + noise * rng.standard_normal(rows.shape, dtype=np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def bench_top_k(n: int, queries: int, centres: np.ndarray) -> None:
    t0 = time.perf_counter()
    matrix = clustered(n, 1, centres)
    made = time.perf_counter() - t0
    qs = clustered(queries, 2, centres, noise=QUERY_NOISE)
    t0 = time.perf_counter()
    index = build_vector_index(matrix)
    built = time.perf_counter() - t0
    exact_positions = exact_top_k_batch(matrix, qs, 10)
    for q in qs[:5]:  # warm-up
        index.search(q, 10)
        top_k(matrix, q, 10)
    ours, reference, found = [], [], []
    for q in qs:
        t0 = time.perf_counter()
        positions, _ = index.search(q, 10)
        t1 = time.perf_counter()
        top_k(matrix, q, 10)
        t2 = time.perf_counter()
        ours.append(t1 - t0)
        reference.append(t2 - t1)
        found.append(positions)
    recall = recall_at_k(np.stack(found), exact_positions)
    info = index.describe()
    o50, o95 = ms(ours)
    r50, r95 = ms(reference)
    print(
        f"top-10 over {n:,} x {DIM} ({made:.1f} s to generate; index {info['kind']}, "
        f"nlist {info.get('nlist')}, nprobe {info.get('nprobe')}, built and calibrated in "
        f"{built:.1f} s, calibration recall@10 {info.get('calibration_recall_at_10')}):\n"
        f"  index  p50 {o50:7.2f} ms  p95 {o95:7.2f} ms  recall@10 vs exact {recall:.4f} "
        f"({queries} queries)\n"
        f"  exact  p50 {r50:7.2f} ms  p95 {r95:7.2f} ms  (reference: search.top_k, numpy)\n"
        f"  p95 speed-up {r95 / o95:.1f}x",
        flush=True,
    )
    del matrix, index


def write_collection(db: Path, n: int, centres: np.ndarray) -> None:
    write_synthetic_collection(db, clustered(n, 3, centres))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=3, replace=False)) + f" {i}" for i in range(count)]


_local = threading.local()


def timed_get(port: int, path: str) -> float:
    """One GET on this thread's keep-alive connection (as a browser or app client keeps it)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    con.request("GET", path)
    response = con.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - t0
    if response.status != 200 or len(json.loads(body)) != 10:
        raise RuntimeError(f"{path}: HTTP {response.status}, {body[:200]!r}")
    return elapsed


def bench_server(args: argparse.Namespace, centres: np.ndarray, tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    t0 = time.perf_counter()
    write_collection(data / "clap.duckdb", args.serve_n, centres)
    model = save_tiny_model(tmp / "tiny-clap-512", projection_dim=DIM)
    print(f"wrote {args.serve_n:,} x {DIM} track_embeddings in {time.perf_counter() - t0:.1f} s")
    env = {
        **os.environ,
        "CLAP_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cli = str(Path(sys.executable).with_name("clap-pipeline"))

    # Reference: the CLI, one process per query.
    cli_times = []
    for text in query_texts(args.cli_queries, 9):
        t0 = time.perf_counter()
        subprocess.run(
            [cli, "search", text, "-k", "10", "--model", str(model)],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        cli_times.append(time.perf_counter() - t0)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        [cli, "serve", "--port", str(port), "--model", str(model), "--poll-s", "0"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{(tmp / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                    health = json.load(response)
                    break
            except OSError:
                if time.perf_counter() - t_start > args.deadline_s:
                    raise RuntimeError("server not healthy before the deadline") from None
                time.sleep(0.5)
        ready = time.perf_counter() - t_start
        paths = [
            "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10})
            for text in query_texts(args.requests + 70, 7)
        ]
        for path in paths[:20]:  # warm-up
            timed_get(port, path)
        sequential = [timed_get(port, path) for path in paths[20:70]]
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            concurrent_times = list(pool.map(lambda p: timed_get(port, p), paths[70:]))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    s50, s95 = ms(sequential)
    c50, c95 = ms(concurrent_times)
    cli50 = float(np.median(cli_times))
    print(
        f"server over {args.serve_n:,} tracks (index {health['index']['kind']}, nprobe "
        f"{health['index'].get('nprobe')}): healthy {ready:.1f} s after start\n"
        f"  /api/search sequential (50)    p50 {s50:7.2f} ms  p95 {s95:7.2f} ms\n"
        f"  /api/search concurrency 8 ({len(concurrent_times)}) p50 {c50:7.2f} ms  p95 "
        f"{c95:7.2f} ms  throughput {len(concurrent_times) / wall:.1f} req/s\n"
        f"  reference `clap-pipeline search` per query (median of {len(cli_times)}): "
        f"{cli50 * 1000:.0f} ms, {cli50 * 1000 / c95:.0f}x the server's p95",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--serve-n", type=int, default=100_000, help="0 skips the server part")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--cli-queries", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=600)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    centres = np.random.default_rng(0).standard_normal((CENTRES, DIM)).astype(np.float32)
    for n in args.sizes:
        bench_top_k(n, args.queries, centres)
    if args.serve_n:
        with tempfile.TemporaryDirectory() as tmp:
            bench_server(args, centres, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
