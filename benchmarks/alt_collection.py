"""A second FMA-format collection whose audio comes from a different synthesiser.

The tiny model's training recipe (docs/training.md, "The tiny model's recipe") was tuned on
`clap-pipeline demo-data`. To check that it learns on data it was not tuned on, this
script writes a collection with FMA's layout and tracks.csv (metadata planned by
``demo.plan_dataset`` with another seed) but audio from an independent, simpler
synthesiser: other instruments, tempi, keys and filters per genre and tag. Clips are 30 s
as FMA's, in 4-s sections that differ in key and melody (what the genre and tags set stays),
so a track's windows differ as a song's do (issue 28). Run the README's demo path on it:

    .venv/bin/python benchmarks/alt_collection.py --out /tmp/alt --tracks 500 --seed 7
    FMA_METADATA_DIR=/tmp/alt/fma_metadata FMA_AUDIO_DIR=/tmp/alt/fma_audio \\
        CLAP_DATA_DIR=/tmp/alt/data scripts/demo.sh

and read the verdict it prints last. ``--sections`` makes each clip's second half another
genre and writes ``fma_metadata/sections.csv``: the evaluation then prints moment accuracy
(does "<genre> music" find its half?) on a collection this project's generator did not make.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.demo import encode  # noqa: E402
from clap_pipeline.demo import plan as demo  # noqa: E402
from clap_pipeline.demo.sections import second_half, split_s, track_sections  # noqa: E402
from clap_pipeline.demo.synth import SR, AudioParams  # noqa: E402
from clap_pipeline.sections import SECTIONS_NAME, sections_csv_text  # noqa: E402
from clap_pipeline.storage import atomic_path, write_text_atomic  # noqa: E402

LOOP_SECONDS = 4.0
# Per genre: (beats per minute, oscillator, octave offset, percussion pattern on 8ths).
STYLE_SOUND = {
    "rock": (132, "square", 0, "kick snare hat"),
    "electronic": (128, "saw", 1, "kick kick hat hat"),
    "hiphop": (86, "sine", -1, "kick snare"),
    "folk": (96, "pluck", 0, ""),
    "classical": (70, "pad", 0, ""),
    "jazz": (150, "tri", 0, "ride"),
    "pop": (116, "bell", 1, "kick clap hat"),
    "experimental": (100, "noise", 0, "glitch"),
}
TEMPO = {"slow": 0.65, "upbeat": 1.0, "fast": 1.45}
OCTAVE = {"low": -1, "high": 1}


def _tone(kind: str, freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    phase = (freq * t) % 1.0
    if kind == "square":
        return np.tanh(4 * np.sign(np.sin(2 * np.pi * freq * t)) * 0.5)
    if kind == "saw":
        return 2 * phase - 1
    if kind == "tri":
        return 4 * np.abs(phase - 0.5) - 1
    if kind == "pluck":
        return np.sin(2 * np.pi * freq * t) * np.exp(-t * 6) + 0.3 * np.sin(
            4 * np.pi * freq * t
        ) * np.exp(-t * 12)
    if kind == "pad":
        return sum(np.sin(2 * np.pi * freq * m * t + m) / m for m in (1, 2, 3)) * np.minimum(
            1, t * 3
        )
    if kind == "bell":
        return np.sin(2 * np.pi * freq * t + 2 * np.sin(2 * np.pi * freq * 3.5 * t)) * np.exp(
            -t * 3
        )
    if kind == "noise":
        return rng.standard_normal(n) * np.sin(2 * np.pi * rng.uniform(2, 9) * t) ** 2
    return np.sin(2 * np.pi * freq * t)


def _hit(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "kick":
        return np.sin(2 * np.pi * (50 + 90 * np.exp(-t * 30)) * t) * np.exp(-t * 12)
    if kind in ("snare", "clap"):
        return rng.standard_normal(n) * np.exp(-t * (25 if kind == "snare" else 40)) * 0.6
    if kind == "hat":
        return np.diff(rng.standard_normal(n + 1)) * np.exp(-t * 80) * 0.3
    if kind == "ride":
        return np.sin(2 * np.pi * 5200 * t) * rng.standard_normal(n) * np.exp(-t * 8) * 0.3
    if kind == "glitch":
        return np.sign(np.sin(2 * np.pi * rng.uniform(800, 5000) * t)) * np.exp(-t * 50) * 0.5
    return np.zeros(n)


def render(params: AudioParams, section: int = 0) -> np.ndarray:
    """One 4-s section as int16 stereo: genre -> instrument and drums, tags ->
    tempo/octave/tone; the section number -> another key and melody."""
    rng = np.random.default_rng([params.seed, 99, params.track_id, section])
    bpm, osc, octave, drums = STYLE_SOUND[params.style]
    bpm *= TEMPO.get(params.tempo or "", 1.0)
    octave += OCTAVE.get(params.register or "", 0)
    n = int(LOOP_SECONDS * SR)
    eighth = int(SR * 30 / bpm)
    root = 110.0 * 2 ** (octave + rng.integers(0, 12) / 12)
    out = np.zeros(n)
    scale = (0, 3, 5, 7, 10, 12) if params.style in ("hiphop", "experimental") else (0, 2, 4, 7, 9)
    for k, start in enumerate(range(0, n, eighth * 2)):
        length = min(eighth * 4, n - start)
        freq = root * 2 ** (scale[rng.integers(len(scale))] / 12)
        out[start : start + length] += 0.4 * _tone(osc, freq, length, rng)
        for j, hit in enumerate(drums.split()):
            pos = start + (j % 2) * eighth
            if pos < n and (k + j) % 2 == 0:
                m = min(eighth, n - pos)
                out[pos : pos + m] += _hit(hit, m, rng)
    spectrum = np.fft.rfft(out)
    freqs = np.fft.rfftfreq(n, 1 / SR)
    if params.tone == "dark":
        spectrum /= 1 + (freqs / 1200) ** 2
    elif params.tone == "bright":
        spectrum *= 1 + (freqs / 4000)
    elif params.tone in ("warm", "lo-fi"):
        spectrum /= 1 + (freqs / 2500) ** 4
    out = np.fft.irfft(spectrum, n)
    if params.tone == "lo-fi":
        out = np.round(out / (np.abs(out).max() + 1e-9) * 24) / 24 + 0.02 * rng.standard_normal(n)
    out *= 0.8 / (np.abs(out).max() + 1e-9)
    stereo = np.stack([out, np.roll(out, int(0.008 * SR))], axis=1)
    return np.round(stereo * 32767).astype("<i2")


def clip_pcm(params: AudioParams, seconds: float, sectioned: bool = False) -> np.ndarray:
    """``seconds`` of 4-s sections; ``sectioned``: another genre from the window boundary
    nearest the middle on (``demo/sections.py`` picks it and says where)."""

    def loops(p: AudioParams, length: float) -> np.ndarray:
        parts = [render(p, k) for k in range(int(np.ceil(length / LOOP_SECONDS)))]
        return np.concatenate(parts)[: round(length * SR)]

    if not sectioned:
        return loops(params, seconds)
    split = split_s(seconds)
    return np.concatenate([loops(params, split), loops(second_half(params), seconds - split)])


def write_clip(
    plan: demo.TrackPlan, audio_root: Path, seconds: float, sectioned: bool = False
) -> None:
    if plan.defect == demo.DEFECT_MISSING:
        return
    path = audio_path(audio_root, plan.track_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.defect == demo.DEFECT_EMPTY:
        encode.encode_mp3(np.zeros((0, 2), "<i2"), 0, path, plan)
        return
    length = encode.SHORT_CLIP_SECONDS if plan.defect == demo.DEFECT_SHORT else seconds
    pcm = clip_pcm(plan.params, length, sectioned and plan.defect is None)
    encode.encode_mp3(pcm, round(length * SR), path, plan)


def write_collection(
    out: Path,
    plans: list[demo.TrackPlan],
    write_batch: Callable[[list[demo.TrackPlan], Path], None],
    batch: int = 1,
    workers: int = 3,
) -> None:
    """An FMA-format collection under ``out``: ``write_batch(plans, audio_root)`` writes the
    clips of each batch of plans (in parallel), then tracks.csv and genres.csv; each folder
    is written aside and renamed into place."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "fma_metadata") as meta, atomic_path(out / "fma_audio") as audio:
        audio.mkdir()
        batches = [plans[i : i + batch] for i in range(0, len(plans), batch)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda part: write_batch(part, audio), batches))
        meta.mkdir()
        (meta / "tracks.csv").write_text(demo.tracks_csv_text(plans), encoding="utf-8")
        (meta / "genres.csv").write_text(demo.genres_csv_text(plans), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tracks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (FMA's: 30)")
    parser.add_argument(
        "--sections",
        action="store_true",
        help="each clip's second half is another genre; fma_metadata/sections.csv says where",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    plans = demo.plan_dataset(args.tracks, args.seed)
    write_collection(
        args.out, plans, lambda part, audio: write_clip(part[0], audio, args.seconds, args.sections)
    )
    if args.sections:  # what the evaluation's moment accuracy asks
        sections = [
            s
            for p in plans
            if p.defect is None
            for s in track_sections(p.params, args.seconds, p.track_id)
        ]
        write_text_atomic(args.out / "fma_metadata" / SECTIONS_NAME, sections_csv_text(sections))
    print(
        f"{len(plans)} tracks (seed {args.seed}, alternative synthesis) in "
        f"{time.perf_counter() - started:.1f} s under {args.out}"
    )


if __name__ == "__main__":
    main()
