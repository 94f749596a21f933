"""Assets `tracks` (DuckDB) and `prompts` (Parquet) of group `metadata`, and their checks.

The work is in ``clap_pipeline.metadata.fma`` and ``clap_pipeline.metadata.prompts``; this module
passes configuration, logs and reports metadata. Checks open DuckDB read-only.
"""

# No `from __future__ import annotations`: Dagster reads the Config annotation at runtime.
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    asset,
    asset_check,
)
from pydantic import Field

from clap_pipeline.dataset import PROMPTS_SCHEMA, read_prompts
from clap_pipeline.metadata.fma import track_id_problems
from clap_pipeline.metadata.materialize import listed, load_tracks, write_experiment_prompts
from clap_pipeline.metadata.prompts import (
    N_TEMPLATES,
    TEMPLATE_PATTERNS,
    allowed_leak_words,
    leak_problems,
    missing_track_ids,
    read_track_texts,
)
from clap_pipeline.storage import table_exists

from .metadata_values import dagster_log, dagster_metadata
from .partitions import sync_audio_folder_partitions
from .resources import ClapSettings

# --------------------------------------------------------------------------- tracks


@asset(
    group_name="metadata",
    kinds={"duckdb"},
    description=(
        "FMA's tracks.csv and genres.csv as DuckDB tables `tracks` (track_id PRIMARY KEY, "
        "the 52 columns as `<group>_<field>`, lists as DuckDB lists, dates as TIMESTAMP, "
        "-1 gaps as NULL, `lookup_key`) and `genres`, swapped in atomically. Registers the "
        "audio-folder partitions of `waveforms` for the experiment's tracks."
    ),
)
def tracks(context: AssetExecutionContext, clap_settings: ClapSettings) -> MaterializeResult:
    settings = clap_settings.settings()
    with clap_settings.connect() as con:
        loaded = load_tracks(con, settings, dagster_log(context))
    try:
        added = sync_audio_folder_partitions(context.instance, settings)
    except FileNotFoundError as exc:  # no audio yet: the table is still useful
        context.log.warning(f"waveforms partitions not registered: {exc}")
        added = []
    if added:
        context.log.info(f"registered audio folder partitions: {listed(added)}")
    return MaterializeResult(
        metadata={
            "dagster/column_schema": _column_schema(loaded.profile.columns),
            **dagster_metadata(loaded.metadata(settings, added)),
        },
        data_version=DataVersion(loaded.summary.tracks_sha256),
    )


def _column_schema(columns: list[tuple[str, str]]) -> TableSchema:
    unique = TableColumnConstraints(nullable=False, unique=True)
    return TableSchema(
        columns=[
            TableColumn(name, dtype, constraints=unique if name == "track_id" else None)
            for name, dtype in columns
        ]
    )


@asset_check(
    asset=tracks,
    blocking=True,
    description="`tracks` has at least one row and unique, non-null track_ids.",
)
def tracks_track_ids_valid(clap_settings: ClapSettings) -> AssetCheckResult:
    with clap_settings.connect(read_only=True) as con:
        problems = track_id_problems(con)
        rows = (
            con.execute("SELECT count(*) FROM tracks").fetchone()[0]
            if table_exists(con, "tracks")
            else 0
        )
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "ok",
        metadata={"rows": rows},
    )


# --------------------------------------------------------------------------- prompts


class PromptsConfig(Config):
    seed: int = Field(default=0, description="seed of the per-track template choice")


@asset(
    group_name="metadata",
    deps=[tracks],
    kinds={"parquet"},
    description=(
        "One text prompt per experiment track (the first CLAP_MAX_TRACKS by track_id whose "
        "MP3 exists) in `$CLAP_DATA_DIR/prompts.parquet`: track_id, prompt, template_id and "
        "the renderings of all five templates (null where one does not apply), then the "
        "track's captions from CLAP_CAPTIONS (CLAP_CAPTIONS_MODE). Templates: "
        + " | ".join(TEMPLATE_PATTERNS)
    ),
)
def prompts(
    context: AssetExecutionContext,
    config: PromptsConfig,
    clap_settings: ClapSettings,
) -> MaterializeResult:
    metadata, version = write_experiment_prompts(
        clap_settings.settings(), config.seed, dagster_log(context)
    )
    return MaterializeResult(metadata=dagster_metadata(metadata), data_version=DataVersion(version))


@asset_check(
    asset=prompts,
    blocking=True,
    description="Every prompt's track_id exists in the DuckDB table `tracks`.",
)
def prompts_tracks_exist(clap_settings: ClapSettings) -> AssetCheckResult:
    table = read_prompts(clap_settings.settings().prompts_path)
    ids = table.column("track_id").to_pylist()
    with clap_settings.connect(read_only=True) as con:
        missing = missing_track_ids(con, ids)
    return AssetCheckResult(
        passed=not missing,
        severity=AssetCheckSeverity.ERROR,
        description=f"track_ids not in `tracks`: {listed(missing)}" if missing else "ok",
        metadata={"prompts": len(ids), "missing": len(missing)},
    )


@asset_check(
    asset=prompts,
    blocking=True,
    description=(
        'No prompt or rendering contains a formatted missing value ("None", "nan"), empty '
        'quotes (""), an empty "Tags: ." / "Genre: ." or a double space.'
    ),
)
def prompts_no_placeholder_text(clap_settings: ClapSettings) -> AssetCheckResult:
    table = read_prompts(clap_settings.settings().prompts_path)
    rows = table.to_pylist()
    with clap_settings.connect(read_only=True) as con:
        texts = {t.track_id: t for t in read_track_texts(con, [r["track_id"] for r in rows])}
    bad: list[str] = []
    for row in rows:
        text = texts.get(row["track_id"])
        allowed = allowed_leak_words(text) if text else set()
        for i, candidate in enumerate([row["prompt"], *row["renderings"]]):
            if candidate is None and i > 0:
                continue
            problems = leak_problems(candidate, allowed)
            if problems:
                where = "prompt" if i == 0 else f"rendering {i - 1}"
                bad.append(f"track {row['track_id']} {where}: {'; '.join(problems)}")
    return AssetCheckResult(
        passed=not bad,
        severity=AssetCheckSeverity.ERROR,
        description=listed(bad, 10) if bad else "ok",
        metadata={"prompts": len(rows), "problems": len(bad)},
    )


@asset_check(
    asset=prompts,
    blocking=True,
    description=(
        "prompts.parquet follows the contract: schema, track_ids unique and sorted, "
        f"{N_TEMPLATES} template renderings per track (then its captions, if any), the prompt "
        "is the rendering of its template_id."
    ),
)
def prompts_match_contract(clap_settings: ClapSettings) -> AssetCheckResult:
    table = read_prompts(clap_settings.settings().prompts_path)
    problems: list[str] = []
    if table.schema.remove_metadata() != PROMPTS_SCHEMA:
        problems.append(f"schema {table.schema.remove_metadata()} != {PROMPTS_SCHEMA}")
    else:
        ids = table.column("track_id").to_pylist()
        if ids != sorted(set(ids)):
            problems.append("track_ids are not unique and sorted")
        for row in table.to_pylist():
            options, tid = row["renderings"], row["track_id"]
            if len(options) < N_TEMPLATES:
                problems.append(f"track {tid}: {len(options)} renderings")
            elif not 0 <= row["template_id"] < len(options):
                problems.append(f"track {tid}: template_id {row['template_id']}")
            elif options[row["template_id"]] != row["prompt"]:
                problems.append(f"track {tid}: prompt differs from its template's rendering")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=listed(problems, 10) if problems else "ok",
        metadata={"prompts": table.num_rows, "problems": len(problems)},
    )
