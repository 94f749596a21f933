"""The tiny offline CLAP: a byte-level tokenizer and a ~120k-parameter model, built without the hub.

``clap-pipeline tiny-model`` saves it; tests, benchmarks and the offline demo train it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    PreTrainedTokenizerFast,
)

from clap_pipeline.model.clap import TEXT_MAX_LENGTH, unfused_feature_extractor
from clap_pipeline.storage import atomic_path

# Words the tiny tokenizer learns as single BPE tokens: FMA's top-level genres, the
# descriptors the demo data uses as tags, and the prompt templates' own words. With pure
# byte tokens a 2-layer, 32-wide text tower needs far more steps to spell "Hip-Hop" out.
TINY_TOKENIZER_WORDS = [
    "rock",
    "jazz",
    "folk",
    "pop",
    "electronic",
    "experimental",
    "hip-hop",
    "classical",
    "country",
    "blues",
    "soul-rnb",
    "spoken",
    "instrumental",
    "international",
    "easy",
    "listening",
    "old-time",
    "historic",
    "house",
    "techno",
    "ambient",
    # Frequent words of FMA's sub-genre names (genres.csv), which prompts carry as genre.
    "metal",
    "punk",
    "indie",
    "psych",
    "garage",
    "idm",
    "chiptune",
    "chip",
    "drone",
    "improv",
    "collage",
    "avant-garde",
    "swing",
    "rap",
    "beats",
    "soundtrack",
    "singer-songwriter",
    "free",
    "modern",
    "chamber",
    "contemporary",
    "composed",
    "century",
    "latin",
    "french",
    "british",
    "dance",
    "downtempo",
    "glitch",
    "minimal",
    "industrial",
    "soul",
    "funk",
    "reggae",
    "dub",
    "trip-hop",
    "post-rock",
    "alternative",
    "sound",
    "slow",
    "fast",
    "upbeat",
    "low",
    "high",
    "bright",
    "dark",
    "warm",
    "lo-fi",
    "guitar",
    "piano",
    "drums",
    "synth",
    "bass",
    "vocal",
    "acoustic",
    "electric",
    "noise",
    "track",
    "called",
    "by",
    "genre",
    "tags",
    "tagged",
    "music",
    "from",
    "the",
    "album",
    "a",
    "an",
    "this",
    "audio",
    "is",
    "song",
]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing byte-level BPE tokenizer built offline (no hub), ~500 tokens.

    Every byte is in the vocabulary, so any text encodes; the merges make the common
    music words above single tokens. It lower-cases (a normaliser saved in
    ``tokenizer.json``): a tiny text tower trained on a few hundred prompts cannot learn
    "Folk" (FMA's genre names) and "folk" (what people type) as two words.
    """

    corpus = [" ".join(TINY_TOKENIZER_WORDS)] * 5 + TINY_TOKENIZER_WORDS
    # A prefix space makes a word one token wherever it stands ("hip" opening a query
    # is then the same token as " hip" inside a prompt).
    bpe = ByteLevelBPETokenizer(lowercase=True, add_prefix_space=True)
    bpe.train_from_iterator(
        corpus,
        vocab_size=2000,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    return roberta_framed(bpe)


def roberta_framed(bpe: ByteLevelBPETokenizer) -> PreTrainedTokenizerFast:
    """A trained byte-level BPE as a transformers tokenizer with RoBERTa's framing and
    special tokens (``<s> text </s>``, ids 0-4 for ``<s> <pad> </s> <unk> <mask>``)."""
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def tiny_clap_config(vocab_size: int = 1024, projection_dim: int = 32) -> ClapConfig:
    """A small CLAP (~120k parameters) that accepts the real (B, 1, 1001, 64) unfused features.

    Sized by measurement (docs/training.md, "The tiny model's recipe"): 8x8 audio patches make the
    HTSAT tower 4x cheaper than the default 4x4 with a width of 32 that learns, where
    16 stayed near random; a wider text tower learned more slowly. ``projection_dim`` 512
    gives the real model's embedding size (for benchmarks of search).
    """
    audio = ClapAudioConfig(
        num_mel_bins=64,
        spec_size=256,
        window_size=8,
        patch_size=8,
        patch_stride=[8, 8],
        patch_embeds_hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        hidden_size=64,
        enable_fusion=False,
    )
    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=43,
        max_position_embeddings=TEXT_MAX_LENGTH + 3,
        pad_token_id=1,
    )
    return ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=projection_dim
    )


def save_tiny_model(out_dir: str | Path, seed: int = 0, projection_dim: int = 32) -> Path:
    """Build the tiny CLAP with its processor and ``save_pretrained`` it into ``out_dir``."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer = byte_level_tokenizer()
        processor = ClapProcessor(
            feature_extractor=unfused_feature_extractor(), tokenizer=tokenizer
        )
        model = ClapModel(tiny_clap_config(len(tokenizer), projection_dim))
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out_dir
