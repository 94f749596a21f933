"""Plain metadata values of the core (``clap_pipeline.reporting``) as Dagster metadata."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from clap_pipeline.reporting import WARNING, Log, Table, metadata_kind


def dagster_log(context: Any) -> Log:
    """The core's :data:`Log` as an op's Dagster log: ``warn`` lines as warnings."""

    def log(line: str) -> None:
        if line.startswith(WARNING):
            context.log.warning(line.removeprefix(WARNING))
        else:
            context.log.info(line)

    return log


_BY_KIND: dict[str, Callable[[Any], MetadataValue]] = {
    "path": lambda v: MetadataValue.path(str(v)),
    "int": lambda v: MetadataValue.int(int(v)),
    "float": lambda v: MetadataValue.float(float(v)),
    "bool": MetadataValue.bool,
    "md": lambda v: MetadataValue.md(str(v)),
    "url": lambda v: MetadataValue.url(str(v)),
    "text": MetadataValue.text,
    "json": lambda v: MetadataValue.json(list(v) if isinstance(v, tuple) else v),
    "null": lambda v: MetadataValue.null(),
}


def _table(value: Table) -> MetadataValue:
    return MetadataValue.table(
        records=[TableRecord(r) for r in value.records],
        schema=TableSchema(columns=[TableColumn(n, t) for n, t in value.columns]),
    )


def dagster_metadata(values: Mapping[str, object]) -> dict[str, MetadataValue]:
    """Each value as the Dagster metadata of its kind (``reporting.metadata_kind``)."""
    return {
        name: _table(value) if isinstance(value, Table) else _BY_KIND[metadata_kind(value)](value)
        for name, value in values.items()
    }
