"""The core's one Log type in an asset: lines as Dagster info, ``warn`` lines as warnings."""

import logging

from dagster import AssetExecutionContext, DagsterInstance, asset, materialize

from clap_pipeline.defs.metadata_values import dagster_log
from clap_pipeline.reporting import warn


@asset
def logs_two_lines(context: AssetExecutionContext) -> None:
    log = dagster_log(context)
    log("decoded 3 clips")
    warn(log, "track 7 skipped (empty)")


def test_warn_lines_are_dagster_warnings() -> None:
    with DagsterInstance.ephemeral() as instance:
        result = materialize([logs_two_lines], instance=instance)
        levels = {
            entry.user_message: entry.level
            for entry in instance.all_logs(result.run_id)
            if entry.user_message in ("decoded 3 clips", "track 7 skipped (empty)")
        }
    assert levels == {"decoded 3 clips": logging.INFO, "track 7 skipped (empty)": logging.WARNING}
