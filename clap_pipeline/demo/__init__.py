"""Offline demo material: FMA-format collections (plan, synth, rendered, encode, collection)
and the pre-trained stand-in CLAP (pretrain)."""

from pathlib import Path

# The pre-trained stand-in that ships with the package (`clap-pipeline pretrain-stand-in`
# wrote it; docs/stand-in.md): what `make demo` fine-tunes when the hub model is out of reach.
SHIPPED_STAND_IN = Path(__file__).resolve().parent / "stand_in_model"
