"""Partitions of the `waveforms` asset: one per FMA audio folder ("000" ... "155").

Folders are dynamic partitions so that folders appearing later (new tracks)
are added without a code change.
"""

from __future__ import annotations

from dagster import DagsterInstance, DynamicPartitionsDefinition

from clap_pipeline.config import Settings
from clap_pipeline.selection import selected_tracks

audio_folder_partitions = DynamicPartitionsDefinition(name="audio_folders")


def experiment_folders(settings: Settings) -> list[str]:
    """Audio folders that hold at least one of the experiment's tracks, sorted."""
    selected = selected_tracks(settings)
    return sorted({t.folder for t in selected})


def sync_audio_folder_partitions(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Register partitions for the experiment's folders that are not known yet; return those added."""
    name = audio_folder_partitions.name
    assert name is not None
    known = set(instance.get_dynamic_partitions(name))
    new = [f for f in experiment_folders(settings) if f not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return new
