"""``python -m clap_pipeline.cli <command>``: the ``clap-pipeline`` command."""

import sys

from clap_pipeline.cli import main

sys.exit(main())
