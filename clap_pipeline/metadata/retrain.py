"""The retrain policy, in one place: when a `retrain` run is requested, and with what.

Three triggers, each a plain function of the settings, the trigger's memory and whether a
retrain is running (``busy``): new tracks (``check_new_tracks``, the new-tracks sensor),
enough new search feedback (``check_feedback``, the feedback sensor), any change of the
data since the last training (``check_data_changed``, the nightly schedule). Each returns
a :class:`RetrainCheck`, which ``defs/automation.py`` turns into a Dagster skip or run
request the same way for the sensors and the schedule.
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


def _no_inputs(settings: Settings) -> RetrainCheck:
    return RetrainCheck(
        f"no inputs yet: {settings.tracks_csv} or {settings.audio_dir} is missing (run "
        "`clap-pipeline demo-data` or `clap-pipeline fetch-fma`)"
    )


def _read_inputs(settings: Settings, csv_hash: CsvHash | None = None) -> RawInputs | RetrainCheck:
    """The selected tracks now, or why they cannot be read (often a file still being copied:
    its next change triggers a new check)."""
    if not (settings.tracks_csv.is_file() and settings.audio_dir.is_dir()):
        return _no_inputs(settings)
    try:
        return raw_inputs(settings.tracks_csv, settings.audio_dir, settings.max_tracks, csv_hash)
    except (OSError, ValueError, FmaFormatError) as exc:
        return RetrainCheck(f"cannot read the inputs: {exc}")


def _request(
    reason: str, inputs: RawInputs, cursor: str | None, key: str, **tags: str
) -> RetrainCheck:
    """A `retrain` request for ``inputs``, keyed by their data version (+ ``key``)."""
    version = inputs.selection.data_version
    return RetrainCheck(
        reason,
        cursor=cursor,
        inputs=inputs,
        run_key=f"retrain-{version}{key}",
        tags={DATA_VERSION_TAG: version, **tags},
    )


def check_new_tracks(settings: Settings, cursor_text: str | None, busy: Busy) -> RetrainCheck:
    """At least CLAP_RETRAIN_MIN_NEW_TRACKS selected tracks that the last training lacked?"""
    cursor = SensorCursor.parse(cursor_text)
    state = inputs_state(settings.metadata_dir, settings.audio_dir)
    if not state.exists:
        return _no_inputs(settings)
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
    except (OSError, ValueError) as exc:
        return RetrainCheck(f"cannot read the inputs: {exc}")
    inputs = _read_inputs(settings, csv_hash)
    if isinstance(inputs, RetrainCheck):
        return inputs
    decision = decide(
        inputs, last_training(settings.training_manifest_path), settings.retrain_min_new_tracks
    )
    new_cursor = SensorCursor(inputs_key, csv_hash).dump()
    if not decision.retrain:
        return RetrainCheck(decision.reason, cursor=new_cursor)
    n_new = str(len(decision.new_track_ids))
    return _request(decision.reason, inputs, new_cursor, "", **{NEW_TRACKS_TAG: n_new})


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
    inputs = _read_inputs(settings)
    if isinstance(inputs, RetrainCheck):
        return inputs
    reason = f"{new} new feedback rows ({count} in all)"
    return _request(
        reason, inputs, str(count), f"-feedback-{count}", **{NEW_FEEDBACK_TAG: str(new)}
    )


def check_data_changed(settings: Settings, busy: Busy) -> RetrainCheck:
    """Has the selection changed at all (new, removed or edited tracks) since the last
    successful training? (The nightly schedule: it keeps no memory of its own.)"""
    running = busy()
    if running is not None:
        return RetrainCheck(running)
    inputs = _read_inputs(settings)
    if isinstance(inputs, RetrainCheck):
        return inputs
    if not inputs.selection.track_ids:
        return RetrainCheck("no track has both a row in tracks.csv and an MP3")
    version = inputs.selection.data_version
    last = last_training(settings.training_manifest_path)
    if last is not None and last.data_version == version:
        return RetrainCheck(
            f"data unchanged since the last successful training (data version {version})"
        )
    n_new = len(set(inputs.selection.track_ids) - set(last.track_ids if last else ()))
    reason = f"the data changed since the last successful training ({n_new} new track(s))"
    return _request(reason, inputs, None, "", **{NEW_TRACKS_TAG: str(n_new)})
