"""Search service speed: top-k at 100,000 and 1,000,000 tracks, and the real server over loopback.

Part 1, top-k alone (``--sizes``, default 100,000 and 1,000,000 x 512): the server's
``VectorIndex`` (faiss IVF with calibrated ``nprobe``, see clap_pipeline/search/vector_index.py)
against the exact scan the CLI uses (``vector_index.top_k``: numpy matmul + partition), query by
query and interleaved so both see the same machine load; recall@10 of the index against
the exact result. The embeddings are synthetic: unit vectors around 1,000 centres (real
CLAP embeddings cluster by genre and sound; uniform random vectors have no structure for
any index to use), queries are fresh draws from the same mixture.

Part 2, the server (``--serve-n`` tracks, default 100,000 x 512): a DuckDB with `tracks` and
`track_embeddings` written by the project's writer (genres, years, licences and durations
varied; Blues is 5 % of the tracks), a CLAP saved offline (``--model tiny``: the tiny CLAP
with 512-d projections; ``--model full``: ``clap-pipeline stand-in-model --size full``,
laion/clap-htsat-unfused's architecture with random weights), ``clap-pipeline serve`` on
127.0.0.1, then ``/api/search`` (query embedding + top-k + metadata) timed from the client:
50 sequential requests, 50 sequential with a filter that keeps 5 % of the tracks
(``genre=Blues``) and ``--requests`` with concurrency 8, after a warm-up, bounded by
``--deadline-s``; every query is distinct (no cache can help). The server runs once per
text encoder: ONNX Runtime int8 (the default) and, as the reference in the same run, the
plain fp32 PyTorch model (``--text-encoder torch``). Before that, the int8 encoder's
agreement with fp32 PyTorch on ``--agreement-queries`` queries: cosine of the embeddings,
and the share of queries whose exact top-10 over the served collection is the same set.
With ``--model tiny`` also ``clap-pipeline search`` (one process per query) as a reference.

Targets: top-k p95 <= 10 ms at 100,000 with recall@10 >= 0.99; at the real size (``--model
full``, 2 cores) /api/search p95 <= 25 ms sequential and <= 60 ms at concurrency 8, with
cosine >= 0.99 and the same top-10 for >= 95 % of the queries.
Usage: python benchmarks/bench_serve.py [--sizes 100000 1000000] [--serve-n 100000]
       [--model full]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
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
from window_bench import bench_windows

from clap_pipeline.dataset import tracks_ddl
from clap_pipeline.demo import SHIPPED_STAND_IN
from clap_pipeline.model.choice import ModelChoice
from clap_pipeline.model.clap import load_clap
from clap_pipeline.model.tiny import save_tiny_model
from clap_pipeline.search.build import write_track_embeddings
from clap_pipeline.search.index import load_embeddings
from clap_pipeline.search.text_encoder import build_encoder
from clap_pipeline.search.vector_index import (
    build_vector_index,
    exact_top_k_batch,
    recall_at_k,
    top_k,
)
from clap_pipeline.search.window_index import CANDIDATES, POOL
from clap_pipeline.storage import duckdb_connection
from clap_pipeline.training.stand_in import save_full_size_model
from clap_pipeline.window_embeddings import AGGREGATIONS

DIM = 512
CENTRES = 1_000
QUERY_NOISE = 1.5
WORDS = [
    *("warm", "lo-fi", "guitar", "dark", "ambient", "folk", "upbeat", "piano", "jazz", "noise"),
    *("slow", "fast", "bright", "mellow", "dreamy", "female", "male", "vocals", "drums", "synth"),
    *("acoustic", "electric", "bass", "strings", "rock", "electronic", "dance", "hip-hop", "beat"),
    *("sad", "happy", "calm", "energetic", "cinematic", "minimal", "soft", "loud", "with", "and"),
]
GENRES = ["Rock", "Electronic", "Experimental", "Hip-Hop", "Folk", "Pop", "Instrumental", "Jazz"]
FILTER_GENRE = "Blues"  # every 20th track: 5 % of the collection
LICENSES = [
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
    "Attribution 4.0 International",
    "Attribution-ShareAlike 3.0 United States",
    "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0",
    "CC0 1.0 Universal",
]


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
        f"  exact  p50 {r50:7.2f} ms  p95 {r95:7.2f} ms  (reference: vector_index.top_k, numpy)\n"
        f"  p95 speed-up {r95 / o95:.1f}x",
        flush=True,
    )
    del matrix, index


def write_collection(db: Path, n: int, centres: np.ndarray) -> None:
    """`tracks` with varied genres, years, licences and durations, then `track_embeddings`."""
    columns = ["track_title", "artist_name", "track_genre_top", "track_license"]
    columns += ["track_duration", "track_bit_rate", "album_date_released"]
    genres = ", ".join(f"'{g}'" for g in GENRES)
    licenses = ", ".join(f"'{name}'" for name in LICENSES)
    with duckdb_connection(db) as con:
        con.execute(tracks_ddl(columns))
        con.execute(
            f"""INSERT INTO tracks SELECT range, 'title ' || range, 'artist ' || (range % 997),
                   CASE WHEN range % 20 = 0 THEN '{FILTER_GENRE}'
                        ELSE ([{genres}])[1 + (range * 7919) % {len(GENRES)}] END,
                   ([{licenses}])[1 + (range * 104729) % {len(LICENSES)}],
                   60 + (range * 31) % 540, 256000,
                   make_timestamp(2000 + (range * 13) % 20, 1, 1, 0, 0, 0)
               FROM range(?)""",
            [n],
        )
    write_track_embeddings(
        db,
        np.arange(n, dtype=np.int64),
        clustered(n, 3, centres),
        [f"/music/{i:06d}.mp3" for i in range(n)],
        np.full(n, 960_000),
        ModelChoice("bench", "1", "bench"),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_texts(count: int, seed: int) -> list[str]:
    """``count`` distinct queries of 2-6 words (so no cache of recent queries can help)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen[" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)), replace=False))] = None
    return list(seen)


def agreement(model: Path, data: Path, queries: int, kinds: list[str], label: str) -> str:
    """Each ONNX encoder against fp32 PyTorch: cosine, same exact top-10 over a collection.

    The collection is the served one when the model embeds in its dimension; else (the
    pre-trained tiny stand-in, 32-d) 100,000 vectors around the fp32 embeddings of 1,000
    other texts (cosine about 0.7 to their centre), so the queries' neighbourhoods are
    dense, as they are among the audio embeddings of a trained model.
    """
    clap = load_clap(model)
    clap.model.eval()
    texts = query_texts(queries, 11)
    tokens = [len(clap.tokenizer(t)["input_ids"]) for t in texts]
    reference = build_encoder(clap, "torch", data / "cache" / "onnx")
    want = np.concatenate([reference(texts[i : i + 50]) for i in range(0, len(texts), 50)])
    spread = want[:200] @ want[:200].T
    matrix = load_embeddings(data / "clap.duckdb").matrix
    collection = "the served collection"
    if matrix.shape[1] != want.shape[1]:
        others = [t for t in query_texts(queries + 1000, 12) if t not in set(texts)][:1000]
        centres = np.concatenate([reference(others[i : i + 50]) for i in range(0, 1000, 50)])
        matrix = clustered(100_000, 13, centres, noise=1.0 / np.sqrt(centres.shape[1]))
        collection = "100,000 vectors around 1,000 other texts' embeddings"
    exact = [set(row.tolist()) for row in exact_top_k_batch(matrix, want, 10)]
    lines = [
        f"agreement with fp32 PyTorch, {label}, over {collection}, on {queries} distinct "
        f"queries (mean {np.mean(tokens):.1f} tokens; the fp32 embeddings of different "
        f"queries have mean pairwise cosine {spread[np.triu_indices(len(spread), 1)].mean():.4f}):"
    ]
    for kind in kinds:
        t0 = time.perf_counter()
        fast = build_encoder(clap, kind, data / "cache" / "onnx")  # the server reuses the file
        export_s = time.perf_counter() - t0
        got = np.concatenate([fast(texts[i : i + 50]) for i in range(0, len(texts), 50)])
        cosine = np.sum(got * want, axis=1)
        found = [set(row.tolist()) for row in exact_top_k_batch(matrix, got, 10)]
        same = np.mean([f == e for f, e in zip(found, exact, strict=True)])
        overlap = np.mean([len(f & e) / 10 for f, e in zip(found, exact, strict=True)])
        lines.append(
            f"  {kind:9s} cosine min {cosine.min():.4f} mean {cosine.mean():.4f}; same top-10 "
            f"set for {100 * same:.1f} % of the queries, mean top-10 overlap {overlap:.3f} "
            f"(export {export_s:.0f} s, cached)"
        )
    return "\n".join(lines)


_local = threading.local()


def timed_get(port: int, path: str) -> float:
    """One GET on this thread's keep-alive connection (as a browser or app client keeps it)."""
    connections = getattr(_local, "connections", None)
    if connections is None:
        connections = _local.connections = {}
    con = connections.get(port)  # one per server: a later run's server has another port
    if con is None:
        con = connections[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    con.request("GET", path)
    response = con.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - t0
    if response.status != 200 or len(json.loads(body)) != 10:
        raise RuntimeError(f"{path}: HTTP {response.status}, {body[:200]!r}")
    return elapsed


def wait_healthy(proc: subprocess.Popen, base: str, log_path: Path, deadline_s: float) -> dict:
    t_start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                return json.load(response)
        except OSError:
            if time.perf_counter() - t_start > deadline_s:
                raise RuntimeError("server not healthy before the deadline") from None
            time.sleep(0.5)


def time_server(
    args: argparse.Namespace, env: dict, model: Path, encoder: str, tmp: Path, seed: int
) -> str:
    """Start `clap-pipeline serve` with ``encoder``, time /api/search; one report line set."""
    cli = str(Path(sys.executable).with_name("clap-pipeline"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / f"serve-{encoder}.log"
    log = open(log_path, "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        [
            cli,
            "serve",
            "--port",
            str(port),
            "--model",
            str(model),
            "--poll-s",
            "0",
            "--text-encoder",
            encoder,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        health = wait_healthy(proc, base, log_path, args.deadline_s)
        return _timed_runs(args, port, encoder, health, time.perf_counter() - t_start, seed)
    except (OSError, RuntimeError) as exc:  # report, and let the next encoder run
        log.flush()
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return f"  text encoder {encoder}: FAILED ({exc!r}); server log tail:\n{tail}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _timed_runs(
    args: argparse.Namespace, port: int, encoder: str, health: dict, ready: float, seed: int
) -> str:
    texts = query_texts(args.requests + 120, seed)
    paths = ["/api/search?" + urllib.parse.urlencode({"q": t, "k": 10}) for t in texts]
    filtered = [
        "/api/search?" + urllib.parse.urlencode({"q": t, "k": 10, "genre": FILTER_GENRE})
        for t in texts[70:120]
    ]
    for path in paths[:20]:  # warm-up
        timed_get(port, path)
    sequential = [timed_get(port, path) for path in paths[20:70]]
    with_filter = [timed_get(port, path) for path in filtered]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        concurrent_times = list(pool.map(lambda p: timed_get(port, p), paths[120:]))
    wall = time.perf_counter() - t0
    s50, s95 = ms(sequential)
    f50, f95 = ms(with_filter)
    c50, c95 = ms(concurrent_times)
    return (
        f"  text encoder {encoder} (index {health['index']['kind']}, nprobe "
        f"{health['index'].get('nprobe')}; healthy {ready:.1f} s after start):\n"
        f"    sequential (50)           p50 {s50:7.2f} ms  p95 {s95:7.2f} ms\n"
        f"    sequential, genre={FILTER_GENRE} (5 %) p50 {f50:7.2f} ms  p95 {f95:7.2f} ms\n"
        f"    concurrency 8 ({len(concurrent_times)})     p50 {c50:7.2f} ms  p95 {c95:7.2f} ms  "
        f"throughput {len(concurrent_times) / wall:.1f} req/s"
    )


def bench_server(args: argparse.Namespace, centres: np.ndarray, tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    t0 = time.perf_counter()
    write_collection(data / "clap.duckdb", args.serve_n, centres)
    print(f"wrote {args.serve_n:,} x {DIM} track_embeddings in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    if args.model == "full":
        model = save_full_size_model(tmp / "stand-in-full")
    else:
        model = save_tiny_model(tmp / "tiny-clap-512", projection_dim=DIM)
    print(f"saved the {args.model} stand-in CLAP in {time.perf_counter() - t0:.1f} s", flush=True)
    env = {
        **os.environ,
        "CLAP_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if args.agreement_queries:
        kinds = [e for e in args.encoders if e != "torch"]
        print(agreement(model, data, args.agreement_queries, kinds, f"{args.model} model"))
        if args.agreement_stand_in:
            label = "the pre-trained tiny stand-in (clap_pipeline/demo/stand_in_model)"
            print(agreement(SHIPPED_STAND_IN, data, args.agreement_queries, kinds, label))
        gc.collect()  # the agreement's two encoders and model: freed before the servers start

    cli_times = []  # reference: the CLI, one process per query
    cli = str(Path(sys.executable).with_name("clap-pipeline"))
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

    print(f"/api/search over {args.serve_n:,} tracks, {args.model} model:", flush=True)
    for i, encoder in enumerate(args.encoders):
        print(time_server(args, env, model, encoder, tmp, seed=7 + i), flush=True)
    if cli_times:
        print(
            f"  reference `clap-pipeline search` per query (median of {len(cli_times)}): "
            f"{float(np.median(cli_times)) * 1000:.0f} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", help="default 100000 1000000 (none with --windows)"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--serve-n", type=int, help="default 100000 (0 with --windows); 0 skips the server part"
    )
    parser.add_argument("--windows", type=int, default=0, help="window index over N windows")
    parser.add_argument("--rule", choices=AGGREGATIONS, default="max", help="with --windows")
    parser.add_argument("--pool", type=int, default=POOL, help="windows per representative")
    parser.add_argument("--coarse", help="faiss factory of the coarse index (default: auto)")
    parser.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="the least; calibration may raise it"
    )
    parser.add_argument(
        "--clip-s", type=float, help="with --windows: tracks are clips this long (default whole)"
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--cli-queries", type=int, default=None, help="default 3 (tiny), 0 (full)")
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["onnx-int8", "onnx", "torch"],
        help="server runs, in order (torch: the fp32 reference)",
    )
    parser.add_argument("--agreement-queries", type=int, default=1000)
    parser.add_argument(
        "--agreement-stand-in",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the agreement on the pre-trained tiny stand-in (queries spread)",
    )
    parser.add_argument("--deadline-s", type=float, default=600)
    args = parser.parse_args()
    if args.sizes is None:
        args.sizes = [] if args.windows else [100_000, 1_000_000]
    if args.serve_n is None:
        args.serve_n = 0 if args.windows else 100_000
    if args.cli_queries is None:
        args.cli_queries = 3 if args.model == "tiny" else 0
    print(f"load average {os.getloadavg()} on {os.cpu_count()} cores", flush=True)
    centres = np.random.default_rng(0).standard_normal((CENTRES, DIM)).astype(np.float32)
    if args.windows:
        bench_windows(
            args.windows,
            args.queries,
            args.rule,
            args.pool,
            args.coarse,
            args.candidates,
            args.clip_s,
        )
    for n in args.sizes:
        bench_top_k(n, args.queries, centres)
    if args.serve_n:
        with tempfile.TemporaryDirectory() as tmp:
            bench_server(args, centres, Path(tmp))
    print(f"load average {os.getloadavg()} at the end", flush=True)


if __name__ == "__main__":
    main()
