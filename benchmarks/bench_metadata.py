"""Benchmark: the `tracks` load (DuckDB) next to FMA's reference pandas loader.

Generates a full-scale FMA-format tracks.csv (106,574 records, 52 columns, HTML
bios with quotes and newlines, Python-repr lists) in a temp dir, then runs each
loader in its own subprocess and prints wall time and peak RSS side by side.
With --verify (default) a last subprocess compares both results on every row
and column.

    .venv/bin/python benchmarks/bench_metadata.py [--tracks 106574] [--repeat 1]

Target (issue 3): >= 3x faster than the reference loader, peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _peak_rss_mb() -> float:
    """Peak RSS of this process: VmHWM (reset by exec, unlike ru_maxrss which a child
    inherits from its parent), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_generate(metadata_dir: Path, n_tracks: int, seed: int) -> dict:
    from clap_pipeline.demo.fma_synthetic import synthetic_tracks, write_metadata

    write_metadata(metadata_dir, synthetic_tracks(n_tracks, seed=seed))
    return {"bytes": (metadata_dir / "tracks.csv").stat().st_size}


def worker_ours(metadata_dir: Path, db_path: Path) -> dict:
    import duckdb

    from clap_pipeline.metadata.fma import load_metadata

    db_path.unlink(missing_ok=True)
    started, cpu = time.perf_counter(), _cpu_s()
    con = duckdb.connect(str(db_path))
    try:
        summary = load_metadata(con, metadata_dir / "tracks.csv", metadata_dir / "genres.csv")
    finally:
        con.close()  # includes DuckDB's checkpoint
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": _cpu_s() - cpu,
        "rows": summary.tracks,
        "bad_cells": len(summary.bad_cells),
    }


def worker_reference(metadata_dir: Path) -> dict:
    from clap_pipeline.demo.fma_synthetic import reference_load

    started, cpu = time.perf_counter(), _cpu_s()
    frame = reference_load(metadata_dir / "tracks.csv")
    return {"seconds": time.perf_counter() - started, "cpu_s": _cpu_s() - cpu, "rows": len(frame)}


def worker_verify(metadata_dir: Path, db_path: Path) -> dict:
    import duckdb

    from clap_pipeline.demo.fma_synthetic import compare_with_reference, reference_load

    frame = reference_load(metadata_dir / "tracks.csv")
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        cells, mismatches = compare_with_reference(con, frame)
    finally:
        con.close()
    return {"cells": cells, "mismatches": mismatches}


def _run_worker(*argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *argv], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(label: str, runs: list[dict]) -> str:
    best = min(r["seconds"] for r in runs)
    median = statistics.median(r["seconds"] for r in runs)
    cpu = min(r["cpu_s"] for r in runs)
    rss = max(r["peak_rss_mb"] for r in runs)
    return f"{label:<36}{best:>9.2f}{median:>9.2f}{cpu:>9.2f}{rss:>13.0f}{runs[0]['rows']:>9}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=106_574)
    parser.add_argument("--repeat", type=int, default=3, help="runs per loader, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, *rest = args.worker
        if kind == "generate":
            result = worker_generate(Path(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "ours":
            result = worker_ours(Path(rest[0]), Path(rest[1]))
        elif kind == "reference":
            result = worker_reference(Path(rest[0]))
        else:
            result = worker_verify(Path(rest[0]), Path(rest[1]))
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_metadata_") as tmp:
        metadata_dir, db_path = Path(tmp) / "fma_metadata", Path(tmp) / "clap.duckdb"
        started = time.perf_counter()
        gen = _run_worker("generate", str(metadata_dir), str(args.tracks), str(args.seed))
        print(
            f"generated tracks.csv: {args.tracks} records, {gen['bytes'] / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        ours: list[dict] = []
        ref: list[dict] = []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            ours.append(_run_worker("ours", str(metadata_dir), str(db_path)))
            ref.append(_run_worker("reference", str(metadata_dir)))
        print(
            f"{'loader':<36}{'best s':>9}{'median s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'rows':>9}"
        )
        print(_row("ours (DuckDB read_csv + SQL)", ours))
        print(_row("reference (pandas + literal_eval)", ref))
        best = min(r["seconds"] for r in ref) / min(r["seconds"] for r in ours)
        median = statistics.median(r["seconds"] for r in ref) / statistics.median(
            r["seconds"] for r in ours
        )
        cpu = min(r["cpu_s"] for r in ref) / min(r["cpu_s"] for r in ours)
        print(
            f"speed-up (reference / ours): best {best:.1f}x, median {median:.1f}x, "
            f"CPU time {cpu:.1f}x (target >= 3x); load average now {os.getloadavg()[0]:.1f}"
        )
        print(f"unparsable cells (ours): {ours[0]['bad_cells']}")
        if not args.no_verify:
            check = _run_worker("verify", str(metadata_dir), str(db_path))
            status = "identical" if not check["mismatches"] else "MISMATCH"
            print(f"verify: {check['cells']} cells compared with the reference: {status}")
            for line in check["mismatches"][:10]:
                print(f"  {line}")
            if check["mismatches"]:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
