"""Speed of `clap-pipeline demo-data`, next to bare ffmpeg encoding the same clips.

Prints, from one run and with the same number of parallel workers:

1. clips/s of ``write_demo_dataset`` for N tracks (synthesis, ffmpeg encodes, metadata,
   atomic rename), and its CPU seconds per clip (this process + ffmpeg children);
2. clips/s of the same ffmpeg encodes fed with loops rendered beforehand (the encoder's
   limit: what generation would reach with free synthesis), on the first M tracks;
3. the load average before and after (the machine may be shared: timings are noisy).

Target (issue #2): 1,000 tracks in under 2 minutes on 2 cores. ``--cores K`` pins this
process and its ffmpeg children to K CPUs (on a machine with more).

    .venv/bin/python benchmarks/bench_demo.py [--tracks 1000] [--reference 60] [--cores 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.demo.collection import write_demo_dataset  # noqa: E402
from clap_pipeline.demo.encode import encode_mp3  # noqa: E402
from clap_pipeline.demo.plan import plan_dataset  # noqa: E402
from clap_pipeline.demo.synth import CLIP_SECONDS, SR, render_loop  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=60, help="clips for the ffmpeg-only run")
    parser.add_argument("--cores", type=int, default=0, help="pin to this many CPUs (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    cores = len(os.sched_getaffinity(0))
    workers = cores + 1  # write_demo_dataset's default
    print(f"{cores} CPUs, {workers} parallel encodes; load average {os.getloadavg()}")

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = Path(tmp)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        summary = write_demo_dataset(root / "demo", n_tracks=args.tracks, seed=args.seed, log=None)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        clips = summary.n_clips

        plans = [p for p in plan_dataset(args.tracks, args.seed) if p.defect is None]
        plans = plans[: args.reference]
        loops = [render_loop(p.params) for p in plans]  # rendered before the clock starts
        out = root / "ffmpeg-only"

        def encode(i: int) -> None:
            path = audio_path(out, plans[i].track_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_mp3(loops[i], round(CLIP_SECONDS * SR), path, plans[i])

        cpu1, t1 = cpu_seconds(), time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(encode, range(len(plans))))
        ref_wall, ref_cpu = time.perf_counter() - t1, cpu_seconds() - cpu1

    rate, ref_rate = clips / wall, len(plans) / ref_wall
    print(f"{'':32} {'clips':>6} {'wall s':>8} {'clips/s':>8} {'CPU s/clip':>11}")
    print(
        f"{'demo-data (write_demo_dataset)':32} {clips:6d} {wall:8.1f} {rate:8.2f} {cpu / clips:11.3f}"
    )
    print(
        f"{'ffmpeg only (pre-rendered PCM)':32} {len(plans):6d} {ref_wall:8.1f} {ref_rate:8.2f} "
        f"{ref_cpu / len(plans):11.3f}"
    )
    print(
        f"demo-data reaches {rate / ref_rate:.0%} of the bare encoder's rate; "
        f"{args.tracks} tracks would take {args.tracks / ref_rate:.0f} s at the encoder's rate "
        f"and {cpu / clips * args.tracks / cores:.0f} s of CPU per core at this run's CPU/clip"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
