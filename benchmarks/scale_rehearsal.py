"""Scale rehearsal: the whole chain through Dagster on N tracks, per-stage cost, fma_large plan.

Writes (or reuses, when its marker matches) an FMA-format collection under ``--work``:
a full-size tracks.csv (106,574 ``synthetic_tracks`` records) whose first N track ids
have an MP3. The MP3s are cheap: a few hundred distinct 30-s demo clips, FMA's length
(the demo generator's plan and encoder, with its defects: empty, 0.5 s, cut mid-frame)
rendered once, then hard-linked into FMA's ``NNN/NNNNNN.mp3`` layout, each track getting
a clip of its genre's style where the demo synthesiser has one.

Then it materializes the chain with the Dagster CLI on a fresh DAGSTER_HOME, one
process per stage as a user would (scripts/demo.sh): ``tracks``+``prompts``, every
``waveforms`` folder partition in one run of job ``decode_waveforms`` (a partition range:
every 5-s window of each clip), ``clap_model`` (tiny offline CLAP, its recipe from
scripts/tiny_model_run_config.yaml with ``--epochs``), ``window_embeddings`` (every window
embedded once), ``evaluation``, ``track_embeddings``, ``model_comparison``, then the search service's index load and
100 searches. Per stage: wall time, items/s, peak RSS of the stage's process tree
(``os.wait4``: the largest of the process and its waited-for descendants) and the bytes
the data folders grew by. Then the partitions' status queries with fma_large's 156
folder partitions registered, and an extrapolation to fma_large built from the
measured per-item costs (assumptions printed with it).

Usage: python benchmarks/scale_rehearsal.py [--tracks 25000] [--epochs 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clap_pipeline.progress import human_bytes, human_duration  # noqa: E402
from clap_pipeline.tables import Paragraph, Table, render_text  # noqa: E402

FMA_LARGE_TRACKS = 106_574
FMA_LARGE_FOLDERS = 156  # 000..155
TEMPLATES = 240  # distinct clips rendered and encoded once
MARKER = ".scale-rehearsal.json"
FORMAT_VERSION = 2  # 2: 30-s clips (every window of FMA's length)
CLIP_SECONDS = 30.0
WINDOWS_PER_CLIP = 6
QUERIES = (
    "folk country music", "heavy rock guitar", "electronic dance beat", "calm piano",
    "jazz saxophone", "hip hop beat", "experimental noise", "pop song with vocals",
    "classical strings", "lo-fi warm", "fast drums", "slow ambient",
)  # fmt: skip
# Reference figures measured earlier (README: "Data path at scale" and "Measured numbers").
H200_TRAIN_CLIPS_S = 648.0  # full-size CLAP, bf16, batch 64, one H200 (benchmarks/bench_train.py)
LOADER_CORES_PER_GPU = 3  # bench_loader.py: cold read, log-mel on the GPU: 2-3 cores per H200
TRAIN_SHARE = 0.8  # FMA's training split: 80 % of the tracks


def log(message: str) -> None:
    print(message, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- collection


def _marker(n_tracks: int) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, "tracks": n_tracks, "templates": TEMPLATES}


def write_collection(root: Path, n_tracks: int) -> tuple[Path, Path]:
    """fma_metadata/ and fma_audio/ under ``root``; reused when the marker matches."""
    from clap_pipeline.dataset import audio_path
    from clap_pipeline.demo.encode import encode_all
    from clap_pipeline.demo.fma_synthetic import synthetic_tracks, write_metadata
    from clap_pipeline.demo.plan import DEFECT_MISSING, plan_dataset, style_for_genres
    from clap_pipeline.processes import usable_cpus

    meta, audio = root / "fma_metadata", root / "fma_audio"
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == _marker(n_tracks):
        log(f"collection: reusing {root} ({n_tracks} tracks with audio)")
        return meta, audio
    for stale in (meta, audio, marker, root / "templates"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    started = time.perf_counter()
    frame = synthetic_tracks(FMA_LARGE_TRACKS, seed=0)
    write_metadata(meta, frame)
    log(f"collection: tracks.csv {FMA_LARGE_TRACKS} rows in {time.perf_counter() - started:.0f} s")

    plans = [p for p in plan_dataset(TEMPLATES, seed=0) if p.defect != DEFECT_MISSING]
    templates = root / "templates"
    encode_all(plans, templates, usable_cpus() + 1, log, clip_seconds=CLIP_SECONDS)
    by_style: dict[str, list[Path]] = {}
    defective: list[Path] = []
    for plan in plans:
        path = audio_path(templates, plan.track_id)
        (defective if plan.defect else by_style.setdefault(plan.params.style, [])).append(path)
    every_style = [p for paths in by_style.values() for p in paths]
    for i, (track_id, genres) in enumerate(
        zip(frame.index[:n_tracks], frame[("track", "genres")][:n_tracks], strict=True)
    ):
        if i % 500 == 250:  # 0.2 % defective clips (empty, 0.5 s, cut mid-frame), in turn
            source = defective[(i // 500) % len(defective)]
        else:
            try:
                pool = by_style.get(style_for_genres(genres), every_style)
            except ValueError:  # no synthesised genre among this track's genres
                pool = every_style
            source = pool[int(track_id) % len(pool)]
        target = audio_path(audio, int(track_id))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    marker.write_text(json.dumps(_marker(n_tracks)))
    log(
        f"collection: {n_tracks} MP3s ({len(plans)} distinct) in "
        f"{len(list(audio.iterdir()))} folders, {time.perf_counter() - started:.0f} s"
    )
    return meta, audio


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    items: int
    unit: str
    wall_s: float
    peak_rss: int  # bytes
    disk: int  # bytes the data folders grew by

    @property
    def rate(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else float("nan")


def disk_usage(paths: Sequence[Path]) -> int:
    total = 0
    for top in paths:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def run_stage(
    name: str, cmd: list[str], env: dict[str, str], items: int, unit: str, watch: Sequence[Path]
) -> Stage:
    """Run ``cmd``; wall time, peak RSS of its process tree, data growth."""
    log(f"==> {name}: {' '.join(cmd[-6:])}  (load {loadavg()})")
    before = disk_usage(watch)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}): {' '.join(cmd)}")
    stage = Stage(name, items, unit, wall, usage.ru_maxrss * 1024, disk_usage(watch) - before)
    log(
        f"    {name}: {human_duration(wall)}, {stage.rate:.1f} {unit}/s, "
        f"peak RSS {human_bytes(stage.peak_rss)}, disk +{human_bytes(stage.disk)}"
    )
    return stage


def bare_cli_reference(audio_dir: Path, n: int, workers: int) -> Stage:
    """The bare ffmpeg CLI over the same audio (30 s per clip): one process per clip,
    ``workers`` at once.

    The reference of the done-when check: the ``waveforms`` run must take at most half
    this wall time. Output to /dev/null, so it is the CLI's best case.
    """
    from clap_pipeline.audio.decode import audio_command, ensure_ffmpeg

    exe = ensure_ffmpeg()
    clips = sorted(audio_dir.glob("[0-9][0-9][0-9]/*.mp3"))[:n]
    log(
        f"==> bare ffmpeg CLI (reference): {len(clips)} clips, {workers} at once  (load {loadavg()})"
    )

    def one(path: Path) -> None:
        subprocess.run(audio_command(path, 0.0, CLIP_SECONDS, exe), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)  # fmt: skip

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, clips))
    wall = time.perf_counter() - started
    stage = Stage("bare ffmpeg CLI (reference)", len(clips), "clips", wall, 0, 0)
    log(f"    {stage.name}: {human_duration(wall)}, {stage.rate:.1f} clips/s")
    return stage


def decode_verdict(waveforms: Stage, reference: Stage, cores: int) -> str:
    ratio = waveforms.wall_s / reference.wall_s * reference.items / waveforms.items
    return (
        f"Decoding: the waveforms run {human_duration(waveforms.wall_s)} for {waveforms.items} "
        f"clips ({waveforms.rate:.1f} clips/s); the bare ffmpeg CLI, {cores} processes at once, "
        f"the same 30 s of audio: {human_duration(reference.wall_s)} for {reference.items} clips "
        f"({reference.rate:.1f} clips/s). Wall time per clip, waveforms run / bare CLI = "
        f"{ratio:.2f} (target <= 0.50), {waveforms.rate / reference.rate:.2f}x "
        "the CLI's rate."
    )


def csv_rows(meta: Path) -> int:
    """Rows of a given collection's tracks.csv (its three header lines not counted)."""
    import pandas as pd

    return len(pd.read_csv(meta / "tracks.csv", header=[0, 1], index_col=0, low_memory=False))


def dagster_python(env: dict[str, str], code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def search_main(out: Path) -> int:
    """``--search-only OUT``: the service's index load and 100 searches (its own process)."""
    from clap_pipeline.config import Settings
    from clap_pipeline.search.index import read_collection
    from clap_pipeline.search.service import SearchService

    started = time.perf_counter()
    service = SearchService(Settings.from_env())
    searcher = service.load()
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(100):
        service.search(QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}"), 10)
    searched = time.perf_counter() - started
    started = time.perf_counter()
    read_collection(service.settings.duckdb_path)  # again, timed alone (warm page cache)
    catalog = time.perf_counter() - started
    result = {
        "rows": len(searcher.index),
        "load_s": loaded,
        "catalog_s": catalog,
        "index_s": searcher.index.vectors.build_seconds,
        "search_s": searched,
        "index": "IVF" if searcher.index.vectors.ivf is not None else "exact",
    }
    out.write_text(json.dumps(result))
    return 0


def partition_queries(env: dict[str, str]) -> dict[str, float]:
    """Time the partitions' status reads with fma_large's 156 folders registered."""
    code = f"""
import json, time
from dagster import AssetKey, DagsterInstance
from clap_pipeline.definitions import defs
instance = DagsterInstance.get()
have = set(instance.get_dynamic_partitions('audio_folders'))
instance.add_dynamic_partitions(
    'audio_folders', [f'{{i:03d}}' for i in range({FMA_LARGE_FOLDERS}) if f'{{i:03d}}' not in have])
key = AssetKey('waveforms')
partitions_def = defs.get_assets_def(key).partitions_def
out = {{}}
t = time.perf_counter(); n = len(instance.get_dynamic_partitions('audio_folders'))
out['partition keys'] = time.perf_counter() - t
t = time.perf_counter(); done = instance.get_materialized_partitions(key)
out['materialized partitions'] = time.perf_counter() - t
t = time.perf_counter()
keys = instance.get_dynamic_partitions('audio_folders')
value = instance.get_status_by_partition(key, keys, partitions_def)
out['status cache (UI partitions view)'] = time.perf_counter() - t
out['_partitions'] = n; out['_materialized'] = len(done)
print(json.dumps(out))
"""
    return json.loads(dagster_python(env, code).splitlines()[-1])


# --------------------------------------------------------------------------- extrapolation


def extrapolate(
    stages: list[Stage], n: int, cores: int, cores_per_gpu: int, search: dict[str, float]
) -> Table:
    """fma_large time per stage on three machines from the measured per-item costs."""
    big = FMA_LARGE_TRACKS
    rows = []
    totals = [0.0, 0.0, 0.0]
    for s in stages:
        # tracks.csv is already full size; the comparison reads MLflow runs, not tracks.
        scale = 1.0 if s.unit in ("rows", "runs") else big / s.items
        here = s.wall_s * scale
        if s.name.startswith("search"):  # start and model load fixed; catalog, index, queries
            linear = search["catalog_s"]
            fixed = s.wall_s - linear - search["index_s"] - search["catalog_s"]
            here = fixed + linear * scale + search["index_s"] * scale**1.5
        if s.name == "waveforms":  # decoding: one process per core, linear in cores
            one, eight = here * cores / 16, here * cores / (8 * cores_per_gpu)
        elif s.name == "clap_model":
            epochs = s.items / (n * TRAIN_SHARE)
            one = big * TRAIN_SHARE * epochs / H200_TRAIN_CLIPS_S
            eight = one / 8
        elif s.name == "window_embeddings":
            # Forward passes of every window, no faster than a training step (conservative);
            # torchrun ranks share the folders.
            one = big * WINDOWS_PER_CLIP / H200_TRAIN_CLIPS_S
            eight = one / 8
        elif s.name == "evaluation":
            # The zero-shot model's windows of validation + test (20 %); the rest is read.
            one = eight = (1 - TRAIN_SHARE) * big * WINDOWS_PER_CLIP / H200_TRAIN_CLIPS_S
        else:  # metadata, prompts, comparison, search: CPU work, same per-item cost
            one = eight = here
        for i, value in enumerate((here, one, eight)):
            totals[i] += value
        rows.append([s.name, human_duration(here), human_duration(one), human_duration(eight)])
    rows.append(["total", *(human_duration(t) for t in totals)])
    return Table(
        ["stage", f"this machine ({cores} cores)", "16 cores + 1 H200", "8 H200, torchrun"],
        rows,
        right=frozenset({1, 2, 3}),
    )


def assumptions(n: int, cores: int, cores_per_gpu: int) -> str:
    return (
        f"Extrapolation to fma_large ({FMA_LARGE_TRACKS} tracks): each stage's measured cost per "
        f"item at N={n} times {FMA_LARGE_TRACKS} (linear; tracks reads the full-size tracks.csv "
        f"already). (a) this machine as measured. (b) 16 cores + one H200: decoding scales with "
        f"cores (x16/{cores}); training runs the full-size CLAP at {H200_TRAIN_CLIPS_S:.0f} clips/s "
        f"(bf16, batch 64, one H200, README 'Measured numbers') on the {TRAIN_SHARE:.0%} training "
        f"split, needing {LOADER_CORES_PER_GPU} loader cores (bench_loader.py, README 'Data path at "
        f"scale'); window_embeddings ({WINDOWS_PER_CLIP} windows a track) and the evaluation's "
        f"zero-shot windows of validation + test as forward passes no faster than a training "
        f"step on one GPU; track_embeddings (reads the window embeddings), metadata, prompts and "
        f"search as measured. (c) 8 H200 under torchrun with {cores_per_gpu} cores per GPU: "
        f"training and window_embeddings / 8 (torchrun ranks), decoding over "
        f"{8 * cores_per_gpu} cores, the rest as (b). model_comparison reads MLflow runs (not tracks): as measured. Search: process "
        f"start, model load and 100 queries as measured (text encoding dominates a query; "
        f"bench_serve.py: IVF top-10 at 100,000 rows < 5 ms p95), catalog read x {FMA_LARGE_TRACKS}/N, "
        f"index build x ({FMA_LARGE_TRACKS}/N)^1.5 (IVF: k-means cells ~ sqrt(N), every row "
        f"assigned to one)."
    )


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=25_000, help="tracks with audio (N)")
    parser.add_argument("--epochs", type=int, default=1, help="clap_model max_epochs")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp dir)")
    parser.add_argument("--cores-per-gpu", type=int, default=16, help="for extrapolation (c)")
    parser.add_argument(
        "--collection",
        type=Path,
        help="an existing FMA-format collection (fma_metadata/, fma_audio/) instead of writing one",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip timing the bare ffmpeg CLI on the clips"
    )
    parser.add_argument("--search-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search_only:
        return search_main(args.search_only)
    from clap_pipeline.processes import usable_cpus

    n, cores = args.tracks, usable_cpus()
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-rehearsal-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"scale rehearsal: N={n}, {args.epochs} epoch(s), {cores} cores, work {work}")
    log(f"load average at start: {loadavg()}")
    # In a child process: the 106,574-row frame would stay in this process's heap (~1 GB).
    if args.collection:
        meta, audio = args.collection / "fma_metadata", args.collection / "fma_audio"
        log(f"collection: {args.collection} (given)")
    else:
        with ProcessPoolExecutor(1) as pool:
            meta, audio = pool.submit(write_collection, work / "collection", n).result()

    run = work / f"run-{n}"
    if run.exists():
        shutil.rmtree(run)
    data, home = run / "data", run / "dagster_home"
    data.mkdir(parents=True)
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CLAP_DATA_DIR": str(data),
        "FMA_METADATA_DIR": str(meta),
        "FMA_AUDIO_DIR": str(audio),
        "CLAP_MAX_TRACKS": str(n),
        "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlflow.db'}",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    tiny = data / "models" / "tiny-clap"
    cli = str(Path(sys.executable).parent / "clap-pipeline")
    subprocess.run([cli, "tiny-model", str(tiny)], env=env, check=True, stdout=subprocess.DEVNULL)
    env["CLAP_MODEL"] = str(tiny)

    import yaml

    recipe = yaml.safe_load((REPO / "scripts" / "tiny_model_run_config.yaml").read_text())
    recipe["ops"]["clap_model"]["config"]["max_epochs"] = args.epochs
    (run / "clap_model.yaml").write_text(yaml.safe_dump(recipe))
    in_process_config = {"execution": {"config": {"in_process": {}}}}
    in_process = json.dumps(in_process_config)
    in_process_file = run / "in_process.yaml"  # `dagster job execute` takes files only
    in_process_file.write_text(yaml.safe_dump(in_process_config))
    dagster = str(Path(sys.executable).parent / "dagster")
    materialize = [dagster, "asset", "materialize", "-m", "clap_pipeline.definitions"]
    watch = [data, home, run / "mlflow.db"]

    stages = [
        run_stage(
            "tracks+prompts",
            [*materialize, "--select", "tracks,prompts", "--config-json", in_process],
            env, csv_rows(meta) if args.collection else FMA_LARGE_TRACKS, "rows", watch,
        )
    ]  # fmt: skip
    folders = dagster_python(
        env,
        "from dagster import DagsterInstance;"
        "print(' '.join(DagsterInstance.get().get_dynamic_partitions('audio_folders')))",
    ).split()
    log(f"    {len(folders)} audio folder partitions: {folders[0]}...{folders[-1]}")
    stages.append(
        run_stage(
            "waveforms",
            [dagster, "job", "execute", "-m", "clap_pipeline.definitions", "-j", "decode_waveforms",
             "--tags", json.dumps({"dagster/asset_partition_range_start": folders[0],
                                   "dagster/asset_partition_range_end": folders[-1]}),
             "-c", str(in_process_file)],
            env, n, "clips", watch,
        )
    )  # fmt: skip
    reference = None if args.no_reference else bare_cli_reference(audio, n, cores)
    stages.append(
        run_stage(
            "clap_model",
            [*materialize, "--select", "clap_model", "-c", str(run / "clap_model.yaml")],
            env, round(n * TRAIN_SHARE) * args.epochs, "train clips", watch,
        )
    )  # fmt: skip
    for name, items, unit in (
        ("window_embeddings", n * WINDOWS_PER_CLIP, "windows"),
        ("evaluation", n, "tracks"),
        ("track_embeddings", n, "tracks"),
        ("model_comparison", 1, "runs"),
    ):
        stages.append(
            run_stage(
                name,
                [*materialize, "--select", name, "--config-json", in_process],
                env, items, unit, watch,
            )
        )  # fmt: skip
    stages.append(
        run_stage(
            "search (load + 100 queries)",
            [sys.executable, str(Path(__file__).resolve()), "--search-only", str(run / "search.json")],
            env, n, "indexed tracks", watch,
        )
    )  # fmt: skip
    search = json.loads((run / "search.json").read_text())
    log(
        f"    search: {search['rows']} rows, snapshot load (model + index) {search['load_s']:.1f} s, "
        f"(catalog read {search['catalog_s']:.1f} s, {search['index']} index build "
        f"{search['index_s']:.1f} s), 100 queries {search['search_s']:.2f} s"
    )
    partitions = partition_queries(env)

    blocks = [
        Paragraph(
            f"Scale rehearsal, N={n} tracks, {args.epochs} epoch(s), {cores} cores; "
            f"load average at the end: {loadavg()}"
        ),
        Table(
            ["stage", "items", "wall", "items/s", "peak RSS", "disk written"],
            [
                [
                    s.name,
                    f"{s.items} {s.unit}",
                    human_duration(s.wall_s),
                    f"{s.rate:.1f}" if s.items > 1 else "",
                    human_bytes(s.peak_rss),
                    human_bytes(s.disk),
                ]
                for s in stages
            ]
            + [
                [
                    "whole chain",
                    "",
                    human_duration(sum(s.wall_s for s in stages)),
                    "",
                    human_bytes(max(s.peak_rss for s in stages)),
                    human_bytes(sum(s.disk for s in stages)),
                ]
            ],
            right=frozenset({1, 2, 3, 4, 5}),
        ),
        *([] if reference is None else [Paragraph(decode_verdict(stages[1], reference, cores))]),
        Paragraph(
            f"Dagster with {partitions['_partitions']} folder partitions "
            f"({partitions['_materialized']} materialized): "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in partitions.items() if k[0] != "_")
        ),
        Paragraph(assumptions(n, cores, args.cores_per_gpu)),
        extrapolate(stages, n, cores, args.cores_per_gpu, search),
    ]
    print()
    print(render_text(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
