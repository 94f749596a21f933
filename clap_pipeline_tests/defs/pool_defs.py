"""A one-asset code location in pool `gpu` for the kill -9 tests (see test_run_health.py).

The asset writes its pid to ``$CLAP_TEST_MARKER`` and then sleeps
``$CLAP_TEST_SLEEP_S`` seconds, so a test can kill the run while it holds the slot.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import Definitions, asset

from clap_pipeline.defs.run_health import guarded_executor


@asset(pool="gpu")
def pooled() -> None:
    Path(os.environ["CLAP_TEST_MARKER"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("CLAP_TEST_SLEEP_S", "0")))


defs = Definitions(assets=[pooled], executor=guarded_executor)
