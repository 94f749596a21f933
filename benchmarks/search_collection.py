"""A searchable collection made offline, for the search benchmarks (soak.py, bench_hybrid.py).

From FMA-format metadata and clips (``clap-pipeline demo-data``'s generator, or any
``fma_metadata/`` + ``fma_audio/`` such as ``alt_collection.py``'s) to what
``clap-pipeline serve`` reads, with the project's own code at each step: `tracks` and
`genres` in DuckDB (``metadata/fma.py``), the first window of each clip decoded in-process
(``audio/decode_av.py``, as `waveforms` does) and embedded by a model's audio tower
(``model/clap.py``), the `track_embeddings` table (``search/build.py``'s writer) with its
lexical index (``search/lexical.py``), and the model registered in MLflow as the champion.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline import run_names, tracking  # noqa: E402
from clap_pipeline.audio.decode import DecodeFailure  # noqa: E402
from clap_pipeline.audio.decode_av import decode_window_av  # noqa: E402
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL  # noqa: E402
from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.model.choice import ModelChoice  # noqa: E402
from clap_pipeline.search.build import write_search_index  # noqa: E402
from clap_pipeline.storage import duckdb_connection  # noqa: E402

STAND_IN = REPO / "clap_pipeline" / "demo" / "stand_in_model"  # the shipped pre-trained one


@dataclass(frozen=True)
class Clips:
    track_ids: np.ndarray
    paths: list[Path]
    windows: np.ndarray  # (n, 240,000) float32: the first window of each clip


def load_tracks(data_dir: Path, metadata_dir: Path) -> None:
    from clap_pipeline.metadata.fma import load_metadata

    data_dir.mkdir(parents=True, exist_ok=True)
    with duckdb_connection(data_dir / "clap.duckdb") as con:
        load_metadata(con, metadata_dir / "tracks.csv", metadata_dir / "genres.csv")


def decode_clips(audio_dir: Path, data_dir: Path) -> Clips:
    """The first window of every clip of the `tracks` table that decodes."""
    with duckdb_connection(data_dir / "clap.duckdb", read_only=True) as con:
        ids = [
            r[0] for r in con.execute("SELECT track_id FROM tracks ORDER BY track_id").fetchall()
        ]
    kept, paths, windows = [], [], []
    for tid in ids:
        path = audio_path(audio_dir, tid)
        try:
            windows.append(decode_window_av(path).samples)
        except DecodeFailure:
            continue  # the demo's defective clips, recorded by `waveforms` in a real run
        kept.append(tid)
        paths.append(path)
    return Clips(np.array(kept, dtype=np.int64), paths, np.stack(windows))


def embed(model_dir: Path, windows: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    from clap_pipeline.model.clap import clip_embeddings, load_clap
    from clap_pipeline.model.features import features_for_model

    clap = load_clap(model_dir)
    features = features_for_model(clap)
    model = clap.model.eval()
    with torch.inference_mode():
        parts = [
            clip_embeddings(model, features, windows[i : i + batch], torch.device("cpu"))
            for i in range(0, len(windows), batch)
        ]
    return np.concatenate(parts)


def register(tracking_uri: str, model_dir: Path, epoch: int) -> str:
    """A registry version of ``clap-fma`` backed by a local model folder; made the champion."""
    client = tracking.client(tracking_uri)
    run_id = client.create_run(tracking.configure(tracking_uri, "search-bench")).info.run_id
    tags = {
        run_names.VERSION_CHECKPOINT_TAG: str(model_dir),
        run_names.VERSION_EPOCH_TAG: str(epoch),
    }
    version = tracking.register_checkpoint(
        client, DEFAULT_REGISTERED_MODEL, run_id=run_id, source=str(model_dir), tags=tags
    )
    client.set_registered_model_alias(DEFAULT_REGISTERED_MODEL, tracking.CHAMPION, version)
    return version


def write_index(data_dir: Path, clips: Clips, matrix: np.ndarray, version: str | None) -> None:
    """`track_embeddings` and its lexical index, as the `track_embeddings` asset writes them."""
    sizes = np.array([p.stat().st_size for p in clips.paths])
    paths = [str(p) for p in clips.paths]
    model = ModelChoice("bench", version, f"run-{version}")
    write_search_index(data_dir / "clap.duckdb", clips.track_ids, matrix, paths, sizes, model)


def text_encoder(model_dir: Path):
    """``text -> embedding`` with the model in PyTorch, as `clap-pipeline search` embeds."""
    from clap_pipeline.search.engine import load_query_encoder

    return load_query_encoder(ModelChoice(str(model_dir)), "torch", model_dir).embed
