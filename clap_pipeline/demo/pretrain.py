"""A pre-trained offline stand-in: the tiny CLAP trained once on rendered music with captions.

The real recipe fine-tunes ``laion/clap-htsat-unfused``, which LAION pre-trained on
captioned audio; a randomly initialised tiny CLAP cannot show that (zero-shot = random)
and learns little from a few hundred rendered clips. This module stands in for LAION's
pre-training, with this project's own code:

1. **A corpus** of clips rendered by ``rendered.py`` (General-MIDI arrangements through
   FluidSynth) from the corpus' own seed and clip ids *above* ``MAX_TRACK_ID``, so no
   clip is a demo collection's track (those ids are FMA's six-digit ones).
2. **Captions from the arrangement**: its genre (an FMA genre name), its band
   (``piano``, ``upright bass``…), tempo and tone words, in several phrasings, some with
   a made-up title and artist, as metadata-derived captions come. A new phrasing is
   drawn every epoch.
3. **Pre-training**: the symmetric InfoNCE of ``training.loss`` with the training loop's
   own step (``train_step``), AdamW groups and cosine schedule, on the 5-s windows the
   pipeline decodes (48 kHz mono, the first 5 s), as log-mel features computed once.

The result is a ``save_pretrained`` folder like ``tiny-model``'s (same architecture and
processor; a tokenizer that also knows the instrument words), which the unchanged
pipeline fine-tunes on the user's collection (``CLAP_MODEL``). ``pretraining.json`` in
the folder records the corpus, the recipe and the per-epoch history.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly
from tokenizers import ByteLevelBPETokenizer
from transformers import ClapConfig, ClapModel, ClapProcessor

from clap_pipeline.dataset import MAX_TRACK_ID
from clap_pipeline.demo.captions import CAPTION_WORDS, caption
from clap_pipeline.demo.plan import GENRE_BY_ID, SUBGENRES, TOP_OF_STYLE, descriptive_tags
from clap_pipeline.demo.rendered import BAND, INSTRUMENT_WORDS, instruments_for, render_batch
from clap_pipeline.demo.schemes import PRETRAIN_SCHEMES, PRETRAIN_SOUNDFONTS
from clap_pipeline.demo.synth import (
    REGISTER_TAGS,
    SR,
    STYLES,
    TEMPO_TAGS,
    TONE_TAGS,
    AudioParams,
    render_clip,
)
from clap_pipeline.metrics import SELECTION_METRIC, retrieval_metrics
from clap_pipeline.model.clap import tokenize, unfused_feature_extractor
from clap_pipeline.model.features import LogMelFeatures
from clap_pipeline.model.tiny import TINY_TOKENIZER_WORDS, roberta_framed, tiny_clap_config
from clap_pipeline.processes import usable_cpus
from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log
from clap_pipeline.storage import atomic_path, write_text_atomic
from clap_pipeline.training.config import TrainConfig, learning_rate_at
from clap_pipeline.training.loop import train_step
from clap_pipeline.training.loss import optimizer_groups, prepare_logit_scales

PRETRAIN_SEED = 2424  # the corpus' own seed (demo collections default to 0)
FIRST_CLIP_ID = MAX_TRACK_ID + 1  # corpus ids never collide with a collection's track ids
WINDOW_SAMPLES = 240_000  # the pipeline's decoded window: 5 s at 48 kHz, from the start
MODEL_RATE = 48_000
CORPUS_FILE, CLIPS_FILE, RECORD_FILE = "features.npy", "clips.json", "pretraining.json"


@dataclass(frozen=True)
class PretrainRecipe:
    """How the stand-in is pre-trained; the defaults made the shipped one (docs/stand-in.md)."""

    clips: int = 2400
    epochs: int = 16
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 40
    weight_decay: float = 0.01
    audio_width: int = 32
    validation_share: float = 0.1
    seed: int = PRETRAIN_SEED
    # The corpus' sources: this share of clips from the synthesiser (synth.py), the rest
    # arranged by one of ``schemes`` and played through one of ``soundfonts``.
    synth_share: float = 0.25
    schemes: tuple[str, ...] = tuple(PRETRAIN_SCHEMES)
    soundfonts: tuple[str, ...] = tuple(PRETRAIN_SOUNDFONTS)


SYNTH = "synth"  # a corpus clip's soundfont when the synthesiser played it


@dataclass(frozen=True)
class CorpusClip:
    clip_id: int
    style: str
    genre: str  # an FMA genre title: the style's top-level genre or one of its sub-genres
    band: tuple[str, ...]  # instruments, as rendered (none from the synthesiser)
    words: tuple[str, ...]  # tempo / tone / register tags, as rendered
    scheme: str = BAND.name  # PRETRAIN_SCHEMES: how the band was arranged
    soundfont: str = "fluidr3"  # PRETRAIN_SOUNDFONTS, or SYNTH

    def params(self, seed: int) -> AudioParams:
        base = AudioParams.from_tags(self.style, self.words, seed, self.clip_id)
        if self.soundfont == SYNTH:
            return base
        return replace(base, instruments=self.band, renderer="fluidsynth")


def plan_corpus(recipe: PretrainRecipe) -> list[CorpusClip]:
    """``recipe.clips`` clips, genres balanced, sources drawn; a function of the recipe."""
    rng = np.random.default_rng([recipe.seed, 31])
    styles = [STYLES[i % len(STYLES)] for i in range(recipe.clips)]
    rng.shuffle(styles)
    clips = []
    for i, style in enumerate(styles):
        top = TOP_OF_STYLE[style]
        genre_id = int(rng.choice((top, *SUBGENRES[top]))) if rng.random() < 0.5 else top
        synth = rng.random() < recipe.synth_share
        scheme = str(rng.choice(recipe.schemes))
        font = SYNTH if synth else str(rng.choice(recipe.soundfonts))
        band = () if synth else tuple(instruments_for(style, rng, PRETRAIN_SCHEMES[scheme]))
        words = tuple(descriptive_tags(rng))
        clips.append(
            CorpusClip(FIRST_CLIP_ID + i, style, GENRE_BY_ID[genre_id][2], band, words,
                       BAND.name if synth else scheme, font)
        )  # fmt: skip
    return clips


def stand_in_tokenizer():
    """The tiny tokenizer's conventions (lower-casing byte-level BPE, prefix space,
    RoBERTa framing), whose merges also make the instrument and caption words one token
    each: the real CLAP's RoBERTa vocabulary has them as whole words too."""
    words = sorted(
        {*TINY_TOKENIZER_WORDS, *(w for i in INSTRUMENT_WORDS for w in i.split())}
        | {*TEMPO_TAGS, *TONE_TAGS, *REGISTER_TAGS, *CAPTION_WORDS}
        | {g[2].lower() for g in GENRE_BY_ID.values()}
    )
    bpe = ByteLevelBPETokenizer(lowercase=True, add_prefix_space=True)
    bpe.train_from_iterator(
        [" ".join(words)] * 5 + words,
        vocab_size=2000,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    return roberta_framed(bpe)


def stand_in_config(vocab_size: int, audio_width: int = 32) -> ClapConfig:
    """``tiny_clap_config`` with the audio tower's width set (HTSAT doubles it per stage)."""
    config = tiny_clap_config(vocab_size).to_dict()
    audio = config["audio_config"]
    audio.update(
        patch_embeds_hidden_size=audio_width,
        hidden_size=audio_width * 2 ** (len(audio["depths"]) - 1),
    )
    return ClapConfig(
        text_config=config["text_config"],
        audio_config=audio,
        projection_dim=config["projection_dim"],
    )


# --------------------------------------------------------------------------- corpus


RENDER_SECONDS = WINDOW_SAMPLES / MODEL_RATE + 0.05
RENDER_BATCH = 48  # clips per FluidSynth run: the soundfont loads once per batch


def render_window(clip: CorpusClip, seed: int) -> np.ndarray:
    """The clip as the pipeline decodes it: the first 5 s, 48 kHz mono float32."""
    return decoded_window(_render([clip], seed)[0])


def _render(clips: Sequence[CorpusClip], seed: int) -> list[np.ndarray]:
    """int16 PCM of clips that share a source (one soundfont, or the synthesiser)."""
    if clips[0].soundfont == SYNTH:
        return [render_clip(c.params(seed), RENDER_SECONDS) for c in clips]
    tracks = [(c.params(seed), PRETRAIN_SCHEMES[c.scheme]) for c in clips]
    return render_batch(tracks, RENDER_SECONDS, PRETRAIN_SOUNDFONTS[clips[0].soundfont])


def decoded_window(pcm: np.ndarray) -> np.ndarray:
    """int16 stereo at the synthesiser's rate as the pipeline decodes it (48 kHz mono, 5 s)."""
    mono = pcm.astype(np.float32).mean(axis=1) / 32768.0
    gcd = math.gcd(MODEL_RATE, SR)
    wave = resample_poly(mono, MODEL_RATE // gcd, SR // gcd).astype(np.float32)
    out = np.zeros(WINDOW_SAMPLES, np.float32)
    out[: min(len(wave), WINDOW_SAMPLES)] = wave[:WINDOW_SAMPLES]
    return out


def build_corpus(
    out_dir: Path, clips: Sequence[CorpusClip], seed: int, log: Log, workers: int | None = None
) -> np.ndarray:
    """Render the clips and compute their log-mel features (float16, (N, 1, 1001, 64)).

    Cached in ``out_dir`` (written atomically): a second call with the same clips reads it.
    """
    out_dir = Path(out_dir)
    index = [asdict(c) for c in clips]
    cached = out_dir / CORPUS_FILE
    listed = out_dir / CLIPS_FILE
    if (
        cached.exists()
        and listed.exists()
        and json.loads(listed.read_text())["clips"] == json.loads(json.dumps(index))
    ):
        return np.load(cached, mmap_mode="r")
    missing = sorted({c.soundfont for c in clips if c.soundfont != SYNTH} - set(_present_fonts()))
    if missing:
        raise FileNotFoundError(
            f"soundfont(s) {missing} of the pre-training corpus are not installed "
            f"({[str(PRETRAIN_SOUNDFONTS[m]) for m in missing]}): apt-get install "
            "fluid-soundfont-gm musescore-general-soundfont-small"
        )
    features = LogMelFeatures(unfused_feature_extractor()).eval()
    workers = workers or usable_cpus()
    log(f"pretraining corpus: rendering {len(clips)} clips with {workers} FluidSynth processes")
    progress = ProgressLog("pretraining corpus", len(clips), log, every_s=10.0)
    out = np.zeros((len(clips), 1, features.n_frames, features.n_mels), np.float16)
    by_source: dict[str, list[int]] = {}
    for row, clip in enumerate(clips):
        by_source.setdefault(clip.soundfont, []).append(row)
    tasks = [
        rows[start : start + RENDER_BATCH]
        for rows in by_source.values()
        for start in range(0, len(rows), RENDER_BATCH)
    ]
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corpus-render") as pool:
        rendered = pool.map(lambda rows: _render([clips[r] for r in rows], seed), tasks)
        for rows, pcms in zip(tasks, rendered, strict=True):
            waves = np.stack([decoded_window(p) for p in pcms])
            with torch.no_grad():
                out[rows] = features(torch.from_numpy(waves)).numpy()
            done += len(rows)
            progress.update(done)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / CORPUS_FILE, "wb") as fh:
            np.save(fh, out)
        (tmp / CLIPS_FILE).write_text(json.dumps({"seed": seed, "clips": index}, indent=1))
    return out


def _present_fonts() -> list[str]:
    return [name for name, path in PRETRAIN_SOUNDFONTS.items() if path.is_file()]


# --------------------------------------------------------------------------- training


def recall_at_5(model: ClapModel, tokenizer, feats: torch.Tensor, texts: list[str]) -> float:
    """Text->audio R@5 of ``texts[i]`` for clip ``i`` (exact pairs)."""
    model.eval()
    with torch.no_grad():
        out = model(**tokenize(tokenizer, texts), input_features=feats.float())
    return retrieval_metrics((out.text_embeds @ out.audio_embeds.T).numpy())[SELECTION_METRIC]


def fit(
    model: ClapModel,
    tokenizer,
    feats: torch.Tensor,
    texts_for: Callable[[int, Sequence[int]], list[str]],
    train_rows: Sequence[int],
    recipe: PretrainRecipe,
    validate: Callable[[], float],
    log: Log,
) -> list[dict[str, float]]:
    """Train on ``feats[train_rows]`` with ``texts_for(epoch, rows)`` as captions.

    The training loop's own step, AdamW groups, logit-scale clamp and cosine schedule.
    Returns one record per epoch (loss, validation score, seconds); the model keeps the
    weights of the epoch with the best validation score.
    """
    torch.manual_seed(recipe.seed)
    prepare_logit_scales(model)
    optimizer = torch.optim.AdamW(optimizer_groups(model, recipe.weight_decay))
    config = TrainConfig(
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        max_epochs=recipe.epochs,
        warmup_steps=recipe.warmup_steps,
        lr_schedule="cosine",
    )
    rng = np.random.default_rng([recipe.seed, 5])
    steps = max(1, len(train_rows) // recipe.batch_size)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = rng.permutation(np.asarray(train_rows))
        batches = [
            [int(r) for r in order[step * recipe.batch_size : (step + 1) * recipe.batch_size]]
            for step in range(steps)
        ]
        loss = _train_epoch(model, optimizer, feats, tokenizer, texts_for, epoch, batches, config)
        score = validate()
        record = {
            "epoch": epoch,
            "loss": loss,
            "val_r5": score,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        log(
            f"epoch {epoch}/{recipe.epochs}: loss {record['loss']:.3f}, validation "
            f"text->audio R@5 {score:.3f} ({record['seconds']:.1f} s)"
        )
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[1])
    return history


def _train_epoch(
    model: ClapModel,
    optimizer: torch.optim.Optimizer,
    feats: torch.Tensor,
    tokenizer,
    texts_for: Callable[[int, Sequence[int]], list[str]],
    epoch: int,
    batches: Sequence[list[int]],
    config: TrainConfig,
) -> float:
    """One epoch of ``train_step`` over ``batches`` (rows of ``feats``); the mean loss."""
    steps, loss_sum = len(batches), 0.0
    for step, rows in enumerate(batches):
        lr = learning_rate_at(config, (epoch - 1) * steps + step + 1, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum += train_step(
            model,
            optimizer,
            feats[rows].float(),
            tokenize(tokenizer, texts_for(epoch, rows)),
            torch.device("cpu"),
            precision="fp32",
        )
    return loss_sum / steps


def pretrain_stand_in(
    out_dir: str | Path,
    recipe: PretrainRecipe = PretrainRecipe(),
    cache_dir: str | Path | None = None,
    log: Log = print,
) -> Path:
    """Render (or read the cached) corpus, pre-train the tiny CLAP on it, save it to ``out_dir``."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    clips = plan_corpus(recipe)
    digest = hashlib.sha256(json.dumps([asdict(c) for c in clips]).encode()).hexdigest()[:12]
    cache = Path(cache_dir) if cache_dir else out_dir.parent / f".corpus-{digest}"
    feats = torch.from_numpy(np.array(build_corpus(cache, clips, recipe.seed, log)))
    corpus_s = time.perf_counter() - started
    tokenizer = stand_in_tokenizer()
    torch.manual_seed(recipe.seed)
    model = ClapModel(stand_in_config(len(tokenizer), recipe.audio_width))
    n_val = max(recipe.batch_size, int(len(clips) * recipe.validation_share))
    val_rows, train_rows = list(range(n_val)), list(range(n_val, len(clips)))
    val_texts = [caption(clips[r], np.random.default_rng([recipe.seed, 6, r])) for r in val_rows]

    def texts_for(epoch: int, rows: Sequence[int]) -> list[str]:
        return [caption(clips[r], np.random.default_rng([recipe.seed, epoch, r])) for r in rows]

    history = fit(
        model,
        tokenizer,
        feats,
        texts_for,
        train_rows,
        recipe,
        lambda: recall_at_5(model, tokenizer, feats[val_rows], val_texts),
        log,
    )
    record = {
        "what": "tiny CLAP pre-trained on rendered music (clap_pipeline.demo.pretrain)",
        "recipe": asdict(recipe),
        "corpus": {
            "clips": len(clips),
            "first_clip_id": FIRST_CLIP_ID,
            "seed": recipe.seed,
            "validation_clips": n_val,
            "seconds_corpus": round(corpus_s, 1),  # rendering, or reading the cache
        },
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    _save_stand_in(out_dir, model, tokenizer, record)
    best = max(history, key=lambda h: h["val_r5"])
    log(
        f"pre-trained stand-in saved to {out_dir}: best epoch {best['epoch']} (validation "
        f"text->audio R@5 {best['val_r5']:.3f} on {n_val} corpus clips), "
        f"{record['seconds']:.0f} s in all"
    )
    return out_dir


def _save_stand_in(out_dir: Path, model: ClapModel, tokenizer, record: dict) -> None:
    """The model, its processor and ``pretraining.json`` as one folder, written atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        ClapProcessor(
            feature_extractor=unfused_feature_extractor(), tokenizer=tokenizer
        ).save_pretrained(tmp)
        write_text_atomic(tmp / RECORD_FILE, json.dumps(record, indent=2) + "\n")
