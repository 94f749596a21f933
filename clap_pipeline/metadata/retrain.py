"""When the sensors request a `retrain` run: new tracks, or enough new search feedback.

Plain Python over the inputs and ``new_tracks.decide``; ``defs/automation.py`` turns a
:class:`RetrainCheck` into a Dagster skip or run request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from clap_pipeline.config import Settings
from clap_pipeline.feedback import count_feedback
from clap_pipeline.metadata.fma import FmaFormatError
from clap_pipeline.metadata.new_tracks import CsvHash, RawInputs, decide, last_training, raw_inputs
from clap_pipeline.selection import inputs_state
from clap_pipeline.storage import DuckDBLockTimeout

DATA_VERSION_TAG = "clap/data_version"
NEW_TRACKS_TAG = "clap/new_tracks"
NEW_FEEDBACK_TAG = "clap/new_feedback"

Busy = Callable[[], str | None]  # why a retrain cannot start now (one is running), or None


@dataclass(frozen=True)
class SensorCursor:
    """What the sensor saw last: the inputs' cheap fingerprint (with the selection settings)
    and tracks.csv's hash."""

    inputs: str | None = None
    tracks_csv: CsvHash | None = None

    @classmethod
    def parse(cls, text: str | None) -> SensorCursor:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}  # a cursor of an older version: start over
        if not isinstance(data, dict):
            data = {}
        return cls(data.get("inputs"), CsvHash.from_json(data.get("tracks_csv")))

    def dump(self) -> str:
        csv = self.tracks_csv.to_json() if self.tracks_csv else None
        return json.dumps({"inputs": self.inputs, "tracks_csv": csv}, sort_keys=True)


@dataclass(frozen=True)
class RetrainCheck:
    """A tick's outcome: no run (``reason``; store ``cursor``, or keep the old one when None),
    or a `retrain` request for ``inputs`` (``run_key``, ``tags``)."""

    reason: str
    cursor: str | None = None
    inputs: RawInputs | None = None
    run_key: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def check_new_tracks(settings: Settings, cursor_text: str | None, busy: Busy) -> RetrainCheck:
    """At least CLAP_RETRAIN_MIN_NEW_TRACKS selected tracks that the last training lacked?"""
    cursor = SensorCursor.parse(cursor_text)
    state = inputs_state(settings.metadata_dir, settings.audio_dir)
    if not state.exists:
        return RetrainCheck(
            f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir} is missing (run "
            "`clap-pipeline demo-data` or `clap-pipeline fetch-fma`)"
        )
    # The settings that change the decision count as inputs: raising CLAP_MAX_TRACKS
    # retrains on the larger selection at the next tick.
    inputs_key = (
        f"{state.fingerprint}:max={settings.max_tracks}:min={settings.retrain_min_new_tracks}"
    )
    if cursor.inputs == inputs_key:
        return RetrainCheck(
            "tracks.csv, the audio folders and the selection settings are unchanged since the "
            "last check"
        )
    running = busy()
    if running is not None:
        return RetrainCheck(running)  # cursor kept: this change is looked at after the run
    try:
        csv_hash = CsvHash.of(settings.tracks_csv, cursor.tracks_csv)
        inputs = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks, csv_hash)
        decision = decide(
            inputs, last_training(settings.training_manifest_path), settings.retrain_min_new_tracks
        )
    except (OSError, ValueError, FmaFormatError) as exc:
        # Often a file still being copied; its next change triggers a new check.
        return RetrainCheck(f"cannot read the inputs: {exc}")
    new_cursor = SensorCursor(inputs_key, csv_hash).dump()
    if not decision.retrain:
        return RetrainCheck(decision.reason, cursor=new_cursor)
    version = inputs.selection.data_version
    return RetrainCheck(
        decision.reason,
        cursor=new_cursor,
        inputs=inputs,
        run_key=f"retrain-{version}",
        tags={DATA_VERSION_TAG: version, NEW_TRACKS_TAG: str(len(decision.new_track_ids))},
    )


def check_feedback(settings: Settings, cursor_text: str | None, busy: Busy) -> RetrainCheck:
    """At least CLAP_RETRAIN_MIN_FEEDBACK search feedback rows since the last request?"""
    try:
        count = count_feedback(settings.duckdb_path)
    except DuckDBLockTimeout as exc:
        return RetrainCheck(f"the DuckDB file is busy, next tick: {exc}")
    seen = int(cursor_text) if (cursor_text or "").isdigit() else 0
    seen = seen if seen <= count else 0  # the table was recreated: count from zero
    new = count - seen
    if new < settings.retrain_min_feedback:
        return RetrainCheck(
            f"{new} new feedback row(s) since the last request, waiting for "
            f"CLAP_RETRAIN_MIN_FEEDBACK={settings.retrain_min_feedback}"
        )
    running = busy()
    if running is not None:
        return RetrainCheck(running)  # cursor kept: these rows count after the run
    if not (settings.tracks_csv.is_file() and settings.audio_dir.is_dir()):
        return RetrainCheck(f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir}")
    try:
        inputs = raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks)
    except (OSError, ValueError, FmaFormatError) as exc:
        return RetrainCheck(f"cannot read the inputs: {exc}")
    version = inputs.selection.data_version
    return RetrainCheck(
        f"{new} new feedback rows ({count} in all)",
        cursor=str(count),
        inputs=inputs,
        run_key=f"retrain-{version}-feedback-{count}",
        tags={DATA_VERSION_TAG: version, NEW_FEEDBACK_TAG: str(new)},
    )
