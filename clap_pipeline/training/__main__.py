"""``python -m clap_pipeline.training`` (and ``torchrun … -m clap_pipeline.training``)."""

import sys

from clap_pipeline.training.command import main

sys.exit(main())
