"""``python -m clap_pipeline.evaluation show|run``: an alias of ``clap-pipeline evaluate``."""

import sys

from clap_pipeline.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
