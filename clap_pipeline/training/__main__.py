"""``python -m clap_pipeline.training`` (and ``torchrun … -m clap_pipeline.training``): an
alias of ``clap-pipeline train``."""

import sys

from clap_pipeline.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
