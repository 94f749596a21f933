"""``python -m clap_pipeline.evaluation show|run``: see ``clap_pipeline.evaluation.evaluate``."""

import sys

from clap_pipeline.evaluation.evaluate import main

sys.exit(main())
