"""Query encoding for the search service: ONNX Runtime graphs exported from the served model.

At the real size (``laion/clap-htsat-unfused``'s RoBERTa-base text tower) one query in
fp32 PyTorch costs more than the whole latency budget on 2 cores. ONNX Runtime runs the
same graph faster in fp32, and faster still with dynamic int8 quantization of the weights
(``onnxruntime.quantization.quantize_dynamic``; benchmarks/bench_serve.py prints all three).

No separate model file can drift from the served one: the text tower + projection +
L2 normalisation of the *loaded* ``ClapModel`` is exported with ``torch.onnx.export``
when the service loads the model, and the result is cached under a key that hashes the
text tower's weights, the config and the library versions. A cached file is reused only
for exactly those weights.

Kinds: ``onnx`` (the fp32 graph: the default), ``onnx-int8``, ``torch`` (the model as
loaded, fp32, what :func:`encode_query` does for one query). int8 is not the default: on
a model whose queries are spread apart (the pre-trained tiny stand-in), it changed the
top-10 of 35 % of 1,000 queries over a dense collection, fp32 ONNX of none
(docs/search.md, "Fast query encoding").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clap_pipeline.storage import atomic_path

log = logging.getLogger(__name__)

ENCODER_KINDS = ("onnx-int8", "onnx", "torch")
DEFAULT_ENCODER = "onnx"
OPSET = 17

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (B, d) float32, rows L2-normalised


def encode_query(clap, text: str) -> np.ndarray:
    """L2-normalised text embedding (d,) of one query, on the CPU (one query: no GPU start-up)."""
    import torch

    from clap_pipeline.model.clap import text_embeddings, tokenize

    model = clap.model
    if model.training or next(model.parameters()).device.type != "cpu":
        model = model.to("cpu").eval()  # a no-op move still costs ~1 ms a query: skip it
    with torch.inference_mode():
        emb = text_embeddings(model, tokenize(clap.tokenizer, [text]))
    return emb[0].float().numpy()


def weights_key(clap, kind: str) -> str:
    """sha256 of the text tower's weights, the config and the versions that shape the graph."""
    import onnx
    import onnxruntime
    import torch

    model = clap.model
    h = hashlib.sha256()
    h.update(f"{kind}|{torch.__version__}|{onnx.__version__}|{onnxruntime.__version__}".encode())
    h.update(model.config.to_json_string().encode())
    for module_name in ("text_model", "text_projection"):
        for name, tensor in getattr(model, module_name).state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _export(clap, path: Path) -> None:
    """The text tower + projection + normalisation of ``clap.model`` as an ONNX graph."""
    import torch

    from clap_pipeline.model.clap import text_embeddings, tokenize

    model = clap.model

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clap = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return text_embeddings(
                self.clap, {"input_ids": input_ids, "attention_mask": attention_mask}
            )

    example = tokenize(clap.tokenizer, ["warm lo-fi guitar with a slow beat", "folk"])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                TextTower(),
                (example["input_ids"].cpu(), example["attention_mask"].cpu()),
                str(path),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    "embedding": {0: "batch"},
                },
                opset_version=OPSET,
            )
    finally:
        # The exporter leaves the module in training mode (dropout on): restore it.
        model.train(was_training)


def onnx_model_path(clap, kind: str, cache_dir: Path) -> Path:
    """The cached ONNX file for exactly these weights, exported (and quantized) when missing."""
    if kind not in ("onnx", "onnx-int8"):
        raise ValueError(f"not an ONNX encoder kind: {kind!r} (expected onnx or onnx-int8)")
    path = Path(cache_dir) / f"text-{kind}-{weights_key(clap, kind)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "text.onnx"
        _export(clap, fp32)
        with atomic_path(path) as out:
            if kind == "onnx":
                fp32.replace(out)
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(fp32, out, weight_type=QuantType.QInt8)
    for old in path.parent.glob(f"text-{kind}-*.onnx"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def onnx_encoder(clap, kind: str, cache_dir: Path, threads: int = 1) -> Encoder:
    """An ONNX Runtime session over the exported text tower (thread-safe ``run``)."""
    import onnxruntime as ort

    from clap_pipeline.model.clap import tokenize

    path = onnx_model_path(clap, kind, cache_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = clap.tokenizer

    def encode(texts: list[str]) -> np.ndarray:
        tokens = tokenize(tokenizer, texts)
        feeds = {name: tensor.numpy() for name, tensor in tokens.items()}
        (emb,) = session.run(["embedding"], feeds)
        return np.asarray(emb, dtype=np.float32)

    return encode


def torch_encoder(clap) -> Encoder:
    """The loaded model in fp32 PyTorch (the reference)."""
    import torch

    from clap_pipeline.model.clap import text_embeddings, tokenize

    def encode(texts: list[str]) -> np.ndarray:
        model = clap.model
        if model.training:
            model.eval()
        with torch.inference_mode():
            return text_embeddings(model, tokenize(clap.tokenizer, texts)).float().cpu().numpy()

    return encode


def build_encoder(clap, kind: str, cache_dir: Path, threads: int = 1) -> Encoder:
    """``kind`` one of ``ENCODER_KINDS``; ONNX graphs are cached in ``cache_dir``."""
    if kind == "torch":
        return torch_encoder(clap)
    if kind in ("onnx", "onnx-int8"):
        return onnx_encoder(clap, kind, cache_dir, threads)
    raise ValueError(f"text encoder {kind!r}: expected one of {', '.join(ENCODER_KINDS)}")


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0


class BatchingEncoder:
    """Queries that arrive together are encoded together: one encoder call per batch.

    ``workers`` threads (one per core, each call on the encoder's own threads) take the
    first waiting request and every other one already waiting, up to ``max_batch`` texts,
    and run them as one batch. A lone request waits for nothing (sequential latency is
    one call); eight at once cost a few batched calls instead of eight calls that fight
    over the cores. Thread-safe. The workers stop on ``close`` or when the encoder is
    garbage-collected (a service that swapped in another model dropped it).
    """

    def __init__(self, encode: Encoder, workers: int, max_batch: int = 16) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = BatchStats()
        workers = max(1, workers)
        for i in range(workers):
            threading.Thread(
                target=_batch_worker,
                args=(self._queue, encode, max_batch, self.stats),
                name=f"query-encoder-{i}",
                daemon=True,
            ).start()
        self._stop = weakref.finalize(self, _stop_workers, self._queue, workers)

    def __call__(self, texts: list[str]) -> np.ndarray:
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((list(texts), done))
        return done.result()

    def close(self) -> None:
        self._stop()


def _stop_workers(requests: queue.SimpleQueue, workers: int) -> None:
    for _ in range(workers):
        requests.put(None)


def _batch_worker(
    requests: queue.SimpleQueue, encode: Encoder, max_batch: int, stats: BatchStats
) -> None:
    while (first := requests.get()) is not None:
        batch = [first]
        size = len(first[0])
        while size < max_batch:
            try:
                item = requests.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: answer this batch, then stop
                requests.put(None)
                break
            batch.append(item)
            size += len(item[0])
        try:
            emb = encode([text for texts, _ in batch for text in texts])
        except Exception as exc:  # every waiting request gets the error
            for _, done in batch:
                done.set_exception(exc)
            continue
        stats.batches += 1
        stats.texts += len(emb)
        start = 0
        for texts, done in batch:
            done.set_result(emb[start : start + len(texts)])
            start += len(texts)
