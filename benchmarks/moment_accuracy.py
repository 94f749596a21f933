"""Moment accuracy of a model, before any training, on tracks whose halves are two genres.

Writes a sectioned collection (``--collection demo``: ``clap-pipeline demo-data --sections``;
``alt``: ``alt_collection.py --sections``, a synthesiser the project's models were not tuned
on), decodes every clip with the pipeline's decoder into 5-s windows, embeds them with the
model (default: the shipped pre-trained stand-in, what the demo fine-tunes) and asks
"<genre> music" of each half: the share whose best window starts inside it, with its
bootstrap interval, next to chance (the half's share of the windows). The evaluation prints
the same number for every evaluated model after training (``evaluation/moments.py``).

Usage: python benchmarks/moment_accuracy.py [--collection demo|alt] [--tracks 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline.audio.upload import decode_upload  # noqa: E402
from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.demo import SHIPPED_STAND_IN  # noqa: E402
from clap_pipeline.demo.collection import write_demo_dataset  # noqa: E402
from clap_pipeline.evaluation.moments import moment_accuracy  # noqa: E402
from clap_pipeline.sections import SECTIONS_NAME, read_sections  # noqa: E402
from clap_pipeline.window_embeddings import WindowEmbeddings  # noqa: E402
from clap_pipeline.windows import CLIP_SECONDS, WindowRule  # noqa: E402


def write_collection(kind: str, out: Path, tracks: int, seed: int, seconds: float) -> None:
    if kind == "demo":
        write_demo_dataset(out, tracks, seed, clip_seconds=seconds, sectioned=True, log=None)
        return
    script = REPO / "benchmarks" / "alt_collection.py"
    command = [sys.executable, str(script), "--out", str(out), "--tracks", str(tracks)]
    command += ["--seed", str(seed), "--seconds", str(seconds), "--sections"]
    subprocess.run(command, check=True)


def embed_windows(model_dir: Path, audio_dir: Path, track_ids: list[int]) -> WindowEmbeddings:
    """Every window of each track's clip, decoded as the pipeline decodes and embedded."""
    import torch

    from clap_pipeline.model.clap import clip_embeddings, load_clap
    from clap_pipeline.model.features import features_for_model

    clap = load_clap(str(model_dir))
    features = features_for_model(clap, "cpu")
    ids, starts, vectors = [], [], []
    with torch.inference_mode():
        for tid in track_ids:
            path = audio_path(audio_dir, tid)
            windows = decode_upload(path, rule=WindowRule(), timeout_s=60, max_s=3600)
            vectors.append(clip_embeddings(clap.model, features, windows, torch.device("cpu")))
            ids += [tid] * len(windows)
            starts += [CLIP_SECONDS * k for k in range(len(windows))]
    start = np.array(starts, dtype=np.float64)
    return WindowEmbeddings(np.array(ids), start, start + CLIP_SECONDS, np.concatenate(vectors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", choices=["demo", "alt"], default="demo")
    parser.add_argument("--tracks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (FMA's: 30)")
    parser.add_argument("--model", type=Path, default=SHIPPED_STAND_IN)
    args = parser.parse_args()
    from clap_pipeline.model.clap import load_clap
    from clap_pipeline.search.text_encoder import encode_query

    print(f"load average {os.getloadavg()} on {os.cpu_count()} cores")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_collection(args.collection, out, args.tracks, args.seed, args.seconds)
        sections = read_sections(out / "fma_metadata" / SECTIONS_NAME)
        track_ids = sorted({s.track_id for s in sections})
        windows = embed_windows(args.model, out / "fma_audio", track_ids)
    clap = load_clap(str(args.model))
    found = moment_accuracy(
        windows, sections, lambda texts: np.stack([encode_query(clap, t) for t in texts])
    )
    assert found is not None
    print(
        f"{args.collection} collection (seed {args.seed}, {len(track_ids)} tracks of "
        f"{args.seconds:g} s, {len(windows)} windows), model {args.model}: moment accuracy "
        f"{found.accuracy:.3f} [{found.ci_low:.3f}, {found.ci_high:.3f}] over {found.queries} "
        f"sections vs chance {found.chance:.3f} ({time.perf_counter() - started:.0f} s)"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
