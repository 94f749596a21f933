"""The search stage's knobs (``knobs.py``): how the collection is embedded, queried, served."""

from __future__ import annotations

from dataclasses import dataclass

from clap_pipeline.knobs import DEVICE, EMBED_BATCH_SIZE, check, knob
from clap_pipeline.search.filters import DEFAULT_MODE, MODES
from clap_pipeline.search.text_encoder import DEFAULT_ENCODER, ENCODER_KINDS


@dataclass(frozen=True)
class EmbedOptions:
    """The `track_embeddings` asset's knobs."""

    batch_size: int = EMBED_BATCH_SIZE.field()
    device: str = DEVICE.field()

    def __post_init__(self) -> None:
        check(self, "track_embeddings config")


@dataclass(frozen=True)
class QueryOptions:
    """`clap-pipeline search` and `playlist`'s knobs."""

    model: str | None = knob(None, "model folder or models:/ URI (default: the champion)")
    mode: str = knob(
        DEFAULT_MODE,
        "hybrid: the audio ranking fused (reciprocal rank fusion) with BM25 over titles, "
        "artists, albums, genres and tags; audio: the audio embedding alone; text: the "
        "names alone",
        choices=MODES,
    )


@dataclass(frozen=True)
class ServeOptions:
    """`clap-pipeline serve`'s knobs."""

    host: str = knob("127.0.0.1", "address to bind")
    port: int = knob(8000, "port", ge=1, le=65535)
    model: str | None = knob(
        None, "model folder or models:/ URI (default: the registry version that built the index)"
    )
    poll_s: float = knob(5.0, "seconds between checks for a rebuilt index (0: never)", ge=0)
    threads: int = knob(1, "threads per query embedding (queries run in parallel)", ge=1)
    text_encoder: str = knob(
        DEFAULT_ENCODER,
        "query encoder: ONNX Runtime fp32 or int8 (faster, but it changes rankings: "
        "docs/search.md), exported from the served model at start and cached by its "
        "weights' hash; or the fp32 PyTorch model",
        choices=ENCODER_KINDS,
    )

    def __post_init__(self) -> None:
        check(self, "serve options")
