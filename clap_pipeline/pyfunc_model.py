"""The fine-tuned CLAP as a standard MLflow model (pyfunc flavour) that embeds text and audio.

``mlflow.pyfunc.load_model("models:/clap-fma@champion").predict(df)`` takes a DataFrame
with a column ``text`` (query sentences) and/or ``audio_path`` (audio files, decoded with
ffmpeg like the `waveforms` asset: the first 5 s at 48 kHz mono) and returns an
``(rows, d)`` float32 array of L2-normalised embeddings, one per row: a row with a text is
embedded with the text tower, a row with only an audio path with the audio tower. Text
and audio embeddings of one model live in the same space, so their dot product is the
search score. ``mlflow models serve -m models:/clap-fma@champion --env-manager local``
serves the same model over HTTP (``POST /invocations``).

``tracking.register_checkpoint`` saves every registered checkpoint this way
(``save_pyfunc``): the save_pretrained folder is the model's artifact ``checkpoint``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
TEXT, AUDIO = "text", "audio_path"
PIP_REQUIREMENTS = ["torch", "transformers>=5,<6", "numpy", "pandas", "imageio-ffmpeg"]


def _present(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


class ClapEmbedder(PythonModel):
    """pyfunc wrapper: one L2-normalised embedding per input row (text, else audio)."""

    def load_context(self, context) -> None:
        import torch

        from clap_pipeline.model.clap import load_clap
        from clap_pipeline.model.features import features_for_model

        self.clap = load_clap(context.artifacts[CHECKPOINT_ARTIFACT])
        self.clap.model.eval()
        self.features = features_for_model(self.clap, seed=0)
        self.torch = torch

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from clap_pipeline.audio.decode import decode_window
        from clap_pipeline.model.clap import audio_embeddings, text_embeddings, tokenize

        frame = pd.DataFrame(model_input)
        if TEXT not in frame and AUDIO not in frame:
            raise ValueError(f"expected a column {TEXT!r} and/or {AUDIO!r}, got {list(frame)}")
        texts = frame[TEXT].tolist() if TEXT in frame else [None] * len(frame)
        paths = frame[AUDIO].tolist() if AUDIO in frame else [None] * len(frame)
        text_rows = [i for i, t in enumerate(texts) if _present(t)]
        audio_rows = [
            i
            for i, (t, p) in enumerate(zip(texts, paths, strict=True))
            if not _present(t) and _present(p)
        ]
        empty = sorted(set(range(len(frame))) - set(text_rows) - set(audio_rows))
        if empty:
            raise ValueError(f"row {empty[0]} has neither a {TEXT!r} nor an {AUDIO!r} value")
        dim = int(self.clap.model.config.projection_dim)
        out = np.zeros((len(frame), dim), dtype=np.float32)
        model = self.clap.model
        with self.torch.inference_mode():
            if text_rows:
                tokens = tokenize(self.clap.tokenizer, [texts[i].strip() for i in text_rows])
                out[text_rows] = text_embeddings(model, tokens).float().numpy()
            if audio_rows:
                waves = np.stack([decode_window(paths[i]).samples for i in audio_rows])
                feats = self.features(self.torch.from_numpy(waves))
                out[audio_rows] = audio_embeddings(model, feats).float().numpy()
        return out


def signature_for(checkpoint_dir: Path):
    """Input: optional string columns ``text`` and ``audio_path``; output: (-1, d) float32."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text(encoding="utf-8"))
    dim = int(config.get("projection_dim", 512))
    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", TEXT, required=False), ColSpec("string", AUDIO, required=False)]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
    )


def save_pyfunc(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an MLflow model folder (MLmodel, python_model, artifacts/checkpoint) to ``out_dir``."""
    import mlflow.pyfunc

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    with warnings.catch_warnings():
        # An input example would make MLflow load and run the model while saving it.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        mlflow.pyfunc.save_model(
            path=str(out_dir),
            python_model=ClapEmbedder(),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
            signature=signature_for(checkpoint_dir),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return out_dir


def checkpoint_in(model_dir: Path) -> Path | None:
    """The save_pretrained folder inside a downloaded pyfunc model folder, if it is one."""
    if not (model_dir / "MLmodel").exists():
        return None
    found = sorted(p.parent for p in (model_dir / "artifacts").rglob("config.json"))
    return found[0] if found else None
