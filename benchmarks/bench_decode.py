"""Decode throughput and memory of the `waveforms` path, next to bare ffmpeg.

Makes N FMA-like clips (30 s, 44.1 kHz stereo MP3 at 256 kb/s: a few distinct
renders hard-linked under FMA's layout) and prints, from one run, with the same
number of parallel workers everywhere (default: one per core), in tracks/s and in
seconds of audio decoded per second (every window of the 30-s clip: six 5-s windows):

1. the asset's decode path (``build_waveforms`` with the default in-process decoder:
   FFmpeg libraries via PyAV in a process pool, the 30-s span decoded once, checks,
   cut into windows and 16-bit PCM in the workers, Parquet writing, failures table);
2. the asset's path with ``decoder="cli"`` (one ffmpeg per clip);
3. the bare ``ffmpeg`` command line decoding the same audio (same arguments, 30 s
   per clip, f32le), one process per clip, as many at once as workers, stdout to
   /dev/null (what a per-clip CLI can do at best);
4. peak RSS of a process running ``build_waveforms`` over N and over 4N tracks,
   and of its largest decode worker process.

Targets (issues #20, #28): (1) >= 3 x (3); RSS(4N) within 20 % of RSS(N).
The load average printed with the numbers says how busy the machine was.

    .venv/bin/python benchmarks/bench_decode.py [--tracks 300] [--repeat 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from clap_pipeline.audio.decode import (  # noqa: E402
    audio_command,
    decode_window,
    ensure_ffmpeg,
)
from clap_pipeline.audio.waveforms import DecodeOptions, build_waveforms  # noqa: E402
from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.processes import usable_cpus  # noqa: E402
from clap_pipeline.selection import SelectedTrack  # noqa: E402
from clap_pipeline.windows import DEFAULT_MAX_AUDIO_S  # noqa: E402

DISTINCT_CLIPS = 8


def make_sources(exe: str, out_dir: Path) -> list[Path]:
    """Distinct 30-s music-like clips: a chord over pink noise, 256 kb/s CBR stereo."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(DISTINCT_CLIPS):
        path = out_dir / f"source{i}.mp3"
        f = 110 * 2 ** (i / 12)
        chord = "+".join(
            f"0.15*sin(2*PI*{f * r:.3f}*t)*(1+0.5*sin(2*PI*{0.5 + k}*t))"
            for k, r in enumerate((1, 1.25, 1.5, 2))
        )
        subprocess.run(
            [exe, "-nostdin", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", f"aevalsrc={chord}|{chord}:s=44100:d=30",
             "-f", "lavfi", "-i", f"anoisesrc=c=pink:r=44100:a=0.05:d=30:s={i}",
             "-filter_complex", "[0:a][1:a]amix=inputs=2:normalize=0",
             "-ac", "2", "-c:a", "libmp3lame", "-b:a", "256k", str(path)],
            check=True, timeout=300,
        )  # fmt: skip
        sources.append(path)
    return sources


def make_library(sources: Sequence[Path], audio_dir: Path, n: int) -> list[SelectedTrack]:
    """``n`` tracks in FMA's layout (ids 1..n), each a hard link to one of the sources."""
    tracks = []
    for track_id in range(1, n + 1):
        path = audio_path(audio_dir, track_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            try:
                os.link(sources[track_id % len(sources)], path)
            except OSError:
                shutil.copyfile(sources[track_id % len(sources)], path)
        tracks.append(SelectedTrack(track_id, path))
    return tracks


def by_folder(tracks: Sequence[SelectedTrack]) -> dict[str, list[SelectedTrack]]:
    groups: dict[str, list[SelectedTrack]] = {}
    for t in tracks:
        groups.setdefault(t.folder, []).append(t)
    return groups


def timed_pool(fn: Callable[[SelectedTrack], object], tracks: Sequence[SelectedTrack],
               workers: int) -> float:  # fmt: skip
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, tracks):
            pass
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process, its finished children (ffmpegs) and its live children with
    theirs (the decode pool's fork server reaps the workers it forked)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def asset_path_seconds(
    tracks: Sequence[SelectedTrack], root: Path, workers: int, decoder: str
) -> float:
    out = root / "waveforms"
    shutil.rmtree(out, ignore_errors=True)
    db = root / "bench.duckdb"
    db.unlink(missing_ok=True)
    options = DecodeOptions(workers=workers, decoder=decoder)
    summary = build_waveforms(by_folder(tracks), out, db, options)
    assert summary.rows == len(tracks) and summary.decoded == len(tracks), summary
    assert summary.windows == 6 * len(tracks), summary  # every window of the 30-s clips
    return summary.seconds


def bare_ffmpeg(exe: str) -> Callable[[SelectedTrack], object]:
    """The CLI decoding the span the asset decodes (30 s from the start), to /dev/null."""

    def run(track: SelectedTrack) -> None:
        command = audio_command(track.path, 0.0, DEFAULT_MAX_AUDIO_S, exe)
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=60)  # fmt: skip

    return run


def peak_rss_mb(audio_dir: Path, n: int, root: Path, workers: int) -> tuple[float, float]:
    """Peak RSS of a fresh process that runs build_waveforms over n tracks, and of its
    largest child (a decode worker)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child-rss", str(n), "--audio-dir", str(audio_dir),
         "--out", str(root / f"rss{n}"), "--workers", str(workers)],
        capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["peak_rss_mb"], result["children_peak_rss_mb"]


def child_rss(n: int, audio_dir: Path, out: Path, workers: int) -> None:
    tracks = [SelectedTrack(tid, audio_path(audio_dir, tid)) for tid in range(1, n + 1)]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary = build_waveforms(by_folder(tracks), out / "waveforms", out / "bench.duckdb",
                              DecodeOptions(workers=workers))  # fmt: skip
    assert summary.rows == n, summary
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "children_peak_rss_mb": children_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=300, help="N (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="best of R timings (default 3)")
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    parser.add_argument("--keep", type=Path, default=None, help="work dir to keep")
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--audio-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workers = args.workers or usable_cpus()
    if args.child_rss is not None:
        child_rss(args.child_rss, args.audio_dir, args.out, workers)
        return

    exe = ensure_ffmpeg()
    n = args.tracks
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-decode-"))
    try:
        print(f"bench_decode: N={n} FMA-like clips (30 s, 44.1 kHz stereo, 256 kb/s MP3), "
              f"{workers} workers, {os.cpu_count()} CPUs, best of {args.repeat}")  # fmt: skip
        sources = make_sources(exe, root / "sources")
        audio_dir = root / "fma_audio"
        tracks = make_library(sources, audio_dir, 4 * n)[:n]
        for t in tracks[: 2 * workers]:  # warm the page cache and the ffmpeg binary
            decode_window(t.path, exe=exe)

        best: dict[str, float] = {}
        methods: dict[str, Callable[[], float]] = {
            "asset path, in-process decode (PyAV pool -> Parquet)": lambda: asset_path_seconds(
                tracks, root, workers, "av"
            ),
            "asset path, decoder=cli (one ffmpeg per clip -> Parquet)": lambda: asset_path_seconds(
                tracks, root, workers, "cli"
            ),
            f"bare ffmpeg CLI, {workers} processes at once, stdout to null": lambda: timed_pool(
                bare_ffmpeg(exe), tracks, workers
            ),
        }
        cpu: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
            for name, run in methods.items():
                cpu_before = cpu_seconds()
                seconds = run()
                used = cpu_seconds() - cpu_before
                best[name] = min(best.get(name, float("inf")), seconds)
                cpu[name] = min(cpu.get(name, float("inf")), used)
        rates = {name: n / seconds for name, seconds in best.items()}
        seconds_per_track = DEFAULT_MAX_AUDIO_S
        for name, rate in rates.items():
            print(f"  {name:<58} {rate:8.1f} tracks/s = {rate * seconds_per_track:8.0f} s of audio/s, "
                  f"{1000 * cpu[name] / n:6.1f} CPU-ms/track")  # fmt: skip
        cpu_asset, _, cpu_bare = cpu.values()
        print(f"  CPU per track, bare ffmpeg CLI / asset path (in-process) = {cpu_bare / cpu_asset:5.2f}x"
              "  (what the ratio of rates tends to when the cores are busy with other work)")  # fmt: skip
        asset, asset_cli, bare = rates.values()
        print(f"  asset path (in-process) / bare ffmpeg CLI = {asset / bare:5.2f}x  (target >= 3)")
        print(f"  asset path (in-process) / asset path, cli = {asset / asset_cli:5.2f}x")
        print(f"  load average after the timings: {Path('/proc/loadavg').read_text().strip()}")

        rss_n, workers_n = peak_rss_mb(audio_dir, n, root, workers)
        rss_4n, workers_4n = peak_rss_mb(audio_dir, 4 * n, root, workers)
        for label, tracks_, rss, worker in [
            ("N", n, rss_n, workers_n),
            ("4N", 4 * n, rss_4n, workers_4n),
        ]:
            print(f"  peak RSS, build_waveforms over {label}={tracks_:<5}  {rss:8.1f} MB "
                  f"(largest decode worker {worker:.1f} MB)")  # fmt: skip
        print(f"  RSS 4N / N                          = {rss_4n / rss_n:5.2f}x  (target <= 1.20)")
        print(f"  worker RSS 4N / N                   = {workers_4n / workers_n:5.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
