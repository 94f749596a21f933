"""The full-size stand-in: the hub model's configuration and a RoBERTa-style tokenizer."""

from __future__ import annotations

from transformers import ClapConfig

from clap_pipeline.cli import build_parser
from clap_pipeline.training.stand_in import (
    ROBERTA_VOCAB_SIZE,
    full_size_config,
    roberta_like_tokenizer,
)


def test_full_size_config_is_the_hub_models() -> None:
    config = full_size_config()
    assert config.to_dict() == ClapConfig().to_dict()
    assert config.text_config.vocab_size == ROBERTA_VOCAB_SIZE
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (768, 12)
    assert config.projection_dim == 512


def test_tokenizer_gives_word_level_counts_with_roberta_framing() -> None:
    tokenizer = roberta_like_tokenizer()
    assert len(tokenizer) < ROBERTA_VOCAB_SIZE  # every id fits the real embedding matrix
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>")] == [0, 1, 2]
    ids = tokenizer("warm lo-fi guitar")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tokenizer.tokenize("warm lo-fi guitar") == ["warm", "Ġlo", "-", "fi", "Ġguitar"]
    # Common words one token each (cased, as RoBERTa): 7 words, 7 tokens.
    assert len(tokenizer.tokenize("Upbeat electronic dance track with female vocals")) == 7
    assert len(tokenizer.tokenize("Okafor")) > 1  # rare names split, as in RoBERTa


def test_stand_in_command_defaults_to_the_full_size() -> None:
    args = build_parser().parse_args(["stand-in-model", "out"])
    assert (args.size, args.out_dir) == ("full", "out")
