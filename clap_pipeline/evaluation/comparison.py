"""Compare every training run of the experiment: a table, a chart and the next `max_epochs`.

No Dagster here: the `model_comparison` asset and ``clap-pipeline runs`` are thin
wrappers. Everything is read back from MLflow, as training and evaluation wrote it (every
name from ``clap_pipeline.run_names``):

* runs tagged ``mlflow.source.name = clap_pipeline.training`` (deleted runs are skipped);
* params ``config.*``, ``n_train``, ``best_epoch``, ``data_version`` (optional);
* per-epoch metrics (step = epoch) ``val_loss`` and ``val_text_to_audio_recall_at_{1,5,10}``;
* test metrics ``eval_test_text_to_audio_recall_at_{1,5,10}`` logged by the evaluation;
* ``feedback_heldout_pairwise_accuracy`` (and ``..._served``) logged by ``feedback_evaluation``;
* the registry: which version of ``clap-fma`` each run registered and which run holds
  ``@champion`` now (the run tag ``registered_model_alias`` is only the alias at the time).

The recommended ``max_epochs`` for the next run is the median best epoch
(``statistics.median_high``: an epoch that was observed) of the most recent
finished runs that recorded one; running and failed runs are shown, never used.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clap_pipeline import run_names, tracking
from clap_pipeline.config import DEFAULT_REGISTERED_MODEL, Settings
from clap_pipeline.metrics import KS, recall_key
from clap_pipeline.reporting import Log, Markdown
from clap_pipeline.storage import atomic_path, write_text_atomic
from clap_pipeline.tables import (
    Block,
    Code,
    Heading,
    Paragraph,
    Table,
    render_markdown,
    render_text,
)

# Params shown in the tables: (MLflow param, column header).
KEY_PARAMS = tuple(
    (run_names.config_param(field), header)
    for field, header in (
        ("learning_rate", "lr"),
        ("batch_size", "batch"),
        ("max_epochs", "max ep"),
        ("patience", "patience"),
    )
)
MAX_EPOCHS_PARAM = run_names.config_param("max_epochs")
DEFAULT_RECENT = 5
REPORT_STEM = "model_comparison"  # reports/model_comparison.{md,png,json}
RETRAIN_ENV = "CLAP_RETRAIN_RUN_CONFIG"
MISSING = "-"


FEEDBACK_ACCURACY = run_names.feedback_metric("pairwise_accuracy")
FEEDBACK_ACCURACY_SERVED = run_names.feedback_metric("pairwise_accuracy", served=True)


def _test_recall(metrics: dict[str, float]) -> dict[int, float]:
    """The run's test text->audio R@k by k; runs evaluated before the ``eval_*`` names
    carry ``test_text_to_audio_recall_at_k`` instead (empty: not evaluated)."""
    out = {}
    for k, names in run_names.held_out_recall_metrics().items():
        found = next((metrics[name] for name in names if name in metrics), None)
        if found is not None:
            out[k] = found
    return out


@dataclass(frozen=True)
class EpochPoint:
    epoch: int
    val_loss: float | None
    val_recall: dict[int, float]  # k -> validation text->audio R@k


@dataclass
class RunSummary:
    run_id: str
    run_name: str
    start_time: datetime  # UTC
    status: str  # MLflow: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    data_version: str | None
    n_train: int | None
    params: dict[str, str]  # KEY_PARAMS that were logged
    best_epoch: int | None  # only finished runs record one
    epochs: list[EpochPoint] = field(default_factory=list)
    test_recall: dict[int, float] | None = None  # k -> test text->audio R@k; None: not evaluated
    registered_version: str | None = None
    aliases: list[str] = field(default_factory=list)  # current registry aliases of that version
    # Held-out search feedback (asset feedback_evaluation): share of liked-above-disliked
    # pairs for this run's version and for the version that served the feedback.
    feedback_accuracy: float | None = None
    feedback_accuracy_served: float | None = None
    is_champion: bool = False

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def best_point(self) -> EpochPoint | None:
        return next((p for p in self.epochs if p.epoch == self.best_epoch), None)

    @property
    def max_epochs(self) -> int | None:
        return _int(self.params.get(MAX_EPOCHS_PARAM))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start_time"] = self.start_time.isoformat()
        return out


@dataclass(frozen=True)
class Recommendation:
    max_epochs: int | None  # None: no finished run with a best epoch yet
    runs: tuple[RunSummary, ...]  # the runs it is based on, oldest first
    recent: int

    @property
    def at_cap(self) -> list[RunSummary]:
        """Runs whose best epoch was their last allowed one: they may have kept improving."""
        return [r for r in self.runs if r.max_epochs is not None and r.best_epoch == r.max_epochs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_epochs": self.max_epochs,
            "recent": self.recent,
            "based_on": [{"run_id": r.run_id, "best_epoch": r.best_epoch} for r in self.runs],
            "at_cap": [r.run_id for r in self.at_cap],
        }


@dataclass(frozen=True)
class ComparisonFiles:
    markdown: Path
    png: Path
    json: Path
    mlflow_run_id: str | None  # the run the files were logged to (None: no run / not logged)


# --------------------------------------------------------------------------- reading MLflow


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _epochs(tracking_uri: str, run_id: str) -> list[EpochPoint]:
    loss = dict(tracking.metric_history(tracking_uri, run_id, run_names.VAL_LOSS))
    recall = {
        k: dict(tracking.metric_history(tracking_uri, run_id, run_names.val_metric(recall_key(k))))
        for k in KS
    }
    steps = sorted(set(loss).union(*(set(v) for v in recall.values())))
    return [
        EpochPoint(
            epoch=int(step),
            val_loss=loss.get(step),
            val_recall={k: recall[k][step] for k in KS if step in recall[k]},
        )
        for step in steps
    ]


def _registry(
    mlflow_client, model_name: str
) -> tuple[dict[str, list], dict[str, list[str]], str | None]:
    """Versions of ``model_name`` by run id, current aliases by version, the champion's run id."""
    by_run: dict[str, list] = {}
    for mv in mlflow_client.search_model_versions(f"name='{model_name}'"):
        by_run.setdefault(mv.run_id or "", []).append(mv)
    aliases: dict[str, list[str]] = {}
    # search_model_versions leaves ModelVersion.aliases empty; the registered model has them.
    for model in mlflow_client.search_registered_models(filter_string=f"name='{model_name}'"):
        for alias, version in model.aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    champion = tracking.alias_version(mlflow_client, model_name, tracking.CHAMPION)
    return by_run, aliases, (champion.run_id if champion is not None else None)


def _summary(
    run,
    tracking_uri: str,
    versions: list,
    aliases: dict[str, list[str]],
    champion_run_id: str | None,
) -> RunSummary:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    best = _int(params.get(run_names.BEST_EPOCH))
    if best is None and run_names.BEST_EPOCH in metrics:
        best = _int(metrics[run_names.BEST_EPOCH])
    test = _test_recall(metrics)
    # The version this run registered in ``model_name`` (the tag may name another model's).
    tagged = tags.get(run_names.REGISTERED_VERSION_TAG)
    mv = next((v for v in versions if str(v.version) == tagged), None)
    if mv is None and versions:
        mv = max(versions, key=lambda v: int(v.version))
    version = str(mv.version) if mv is not None else None
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id[:8],
        start_time=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
        status=run.info.status,
        data_version=params.get(run_names.DATA_VERSION) or None,
        n_train=_int(params.get(run_names.N_TRAIN)),
        params={p: params[p] for p, _ in KEY_PARAMS if p in params},
        best_epoch=best,
        epochs=_epochs(tracking_uri, run.info.run_id),
        test_recall=test or None,
        registered_version=version,
        aliases=sorted(aliases.get(version or "", [])),
        is_champion=champion_run_id is not None and run.info.run_id == champion_run_id,
        feedback_accuracy=metrics.get(FEEDBACK_ACCURACY),
        feedback_accuracy_served=metrics.get(FEEDBACK_ACCURACY_SERVED),
    )


def collect_runs(
    tracking_uri: str, experiment: str, model_name: str = DEFAULT_REGISTERED_MODEL
) -> list[RunSummary]:
    """Every training run of ``experiment``, oldest first ([] when there is none yet)."""
    from mlflow.entities import ViewType

    db = tracking.sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return []  # no store yet: do not create one just to read it
    mlflow_client = tracking.client(tracking_uri)
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        return []
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{run_names.SOURCE_TAG}` = '{run_names.TRAINING_SOURCE}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    if not runs:
        return []
    by_run, aliases, champion_run_id = _registry(mlflow_client, model_name)
    summaries = [
        _summary(r, tracking_uri, by_run.get(r.info.run_id, []), aliases, champion_run_id)
        for r in runs
    ]
    return sorted(summaries, key=lambda s: (s.start_time, s.run_id))


# --------------------------------------------------------------------------- recommendation


def recommend_max_epochs(
    runs: Sequence[RunSummary], recent: int = DEFAULT_RECENT
) -> Recommendation:
    """Median best epoch of the ``recent`` latest finished runs that recorded one."""
    if recent < 1:
        raise ValueError(f"recent must be >= 1, got {recent}")
    usable = [r for r in runs if r.finished and r.best_epoch is not None]
    used = sorted(usable, key=lambda r: (r.start_time, r.run_id))[-recent:]
    value = statistics.median_high([r.best_epoch for r in used]) if used else None
    return Recommendation(max_epochs=value, runs=tuple(used), recent=recent)


def _run_config_yaml(max_epochs: int) -> str:
    return f"ops:\n  clap_model:\n    config:\n      max_epochs: {max_epochs}\n"


def recommendation_lines(rec: Recommendation, retrain_run_config: Path | None = None) -> list[str]:
    """Plain sentences (Markdown-safe) on the next run's `max_epochs` and how to set it."""
    if rec.max_epochs is None:
        return [
            "No recommendation for `max_epochs` yet: no finished training run recorded a best "
            "epoch (running and failed runs are not used)."
        ]
    based = ", ".join(f"{r.run_name} ({r.best_epoch})" for r in rec.runs)
    where = (
        f"the YAML file named by `{RETRAIN_ENV}` (now {retrain_run_config})"
        if retrain_run_config
        else f"the YAML file named by `{RETRAIN_ENV}` (not set)"
    )
    lines = [
        f"Recommended `max_epochs` for the next run: {rec.max_epochs}, the median best epoch "
        f"of the {len(rec.runs)} most recent finished run(s) (up to {rec.recent} are used): "
        f"{based}.",
        f"To apply it, set `max_epochs: {rec.max_epochs}` in the `clap_model` run config: in the "
        f"Launchpad for a manual materialization, or for automated retrain runs in {where}, "
        "under `ops.clap_model.config`.",
    ]
    if rec.at_cap:
        names = ", ".join(r.run_name for r in rec.at_cap)
        lines.append(
            f"Note: {len(rec.at_cap)} of these run(s) peaked at their last allowed epoch "
            f"({names}); they might have kept improving, so a larger `max_epochs` with "
            "early stopping (`patience`) is worth a try."
        )
    return lines


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _model_cell(run: RunSummary) -> str:
    if run.registered_version is None:
        return MISSING
    return " ".join([f"v{run.registered_version}", *(f"@{a}" for a in run.aliases)])


RUN_HEADERS = [
    "",
    "run",
    "started (UTC)",
    "status",
    "data version",
    "n_train",
    *(h for _, h in KEY_PARAMS),
    "best epoch",
    *(f"val R@{k}" for k in KS),
    *(f"test R@{k}" for k in KS),
    "model",
]
EPOCH_HEADERS = ["run", "epoch", "val loss", *(f"val R@{k}" for k in KS)]


def run_rows(runs: Sequence[RunSummary], mark: str) -> list[list[str]]:
    """One row per run; ``mark`` flags the champion. Val R@k is at the best epoch."""
    rows = []
    for r in runs:
        best = r.best_point
        test = r.test_recall or {}
        rows.append(
            [
                mark if r.is_champion else "",
                r.run_name,
                r.start_time.strftime("%Y-%m-%d %H:%M"),
                r.status,
                r.data_version or MISSING,
                MISSING if r.n_train is None else str(r.n_train),
                *(r.params.get(p, MISSING) for p, _ in KEY_PARAMS),
                MISSING if r.best_epoch is None else str(r.best_epoch),
                *(_fmt(best.val_recall.get(k) if best else None) for k in KS),
                *(_fmt(test.get(k)) for k in KS),
                _model_cell(r),
            ]
        )
    return rows


FEEDBACK_HEADERS = ["run", "model", "feedback acc.", "served model's acc."]
FEEDBACK_TITLE = (
    "Held-out search feedback (asset feedback_evaluation): share of (query, liked, "
    "disliked) pairs ranked liked first, by the run's model and by the model that served them"
)


def feedback_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """Runs whose model was scored on held-out search feedback (empty: no section)."""
    return [
        [r.run_name, _model_cell(r), _fmt(r.feedback_accuracy), _fmt(r.feedback_accuracy_served)]
        for r in runs
        if r.feedback_accuracy is not None
    ]


def epoch_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    """One row per run and epoch; the best epoch is suffixed with `(best)`."""
    rows = []
    for r in runs:
        for p in r.epochs:
            rows.append(
                [
                    r.run_name,
                    f"{p.epoch} (best)" if p.epoch == r.best_epoch else str(p.epoch),
                    _fmt(p.val_loss, 4),
                    *(_fmt(p.val_recall.get(k)) for k in KS),
                ]
            )
    return rows


def _no_runs(experiment: str, tracking_uri: str) -> str:
    return (
        f"No training runs in MLflow experiment {experiment!r} ({tracking_uri}) yet: "
        "materialize the `clap_model` asset first."
    )


def _champion_line(runs: Sequence[RunSummary], model_name: str) -> str:
    champ = next((r for r in runs if r.is_champion), None)
    if champ is None:
        return f"No run of this experiment holds `{model_name}@{tracking.CHAMPION}`."
    return (
        f"Champion: `{model_name}@{tracking.CHAMPION}` = v{champ.registered_version}, "
        f"run {champ.run_name} ({champ.run_id})."
    )


def comparison_blocks(
    runs: Sequence[RunSummary],
    rec: Recommendation,
    *,
    experiment: str,
    tracking_uri: str,
    model_name: str = DEFAULT_REGISTERED_MODEL,
    retrain_run_config: Path | None = None,
    unicode: bool = True,
) -> list[Block]:
    """The report once, for both renderings; ``unicode=False`` keeps it ASCII (terminal)."""
    if not runs:
        return [Paragraph(_no_runs(experiment, tracking_uri))]
    star, arrow = ("★", "→") if unicode else ("*", "->")
    blocks: list[Block] = [
        Paragraph(
            f"**{len(runs)} training run(s) of MLflow experiment `{experiment}`** "
            f"({tracking_uri}), oldest first. {star} = champion; val R@k = validation "
            f"text{arrow}audio recall at the best epoch; test R@k = the evaluation's "
            f"text{arrow}audio recall (- = not evaluated)."
        ),
        Table(RUN_HEADERS, run_rows(runs, star)),
        Paragraph(_champion_line(runs, model_name)),
        Heading(f"Validation per epoch (text{arrow}audio)"),
        Table(EPOCH_HEADERS, epoch_rows(runs))
        if any(r.epochs for r in runs)
        else Paragraph("(none)"),
        *(Paragraph(line) for line in recommendation_lines(rec, retrain_run_config)),
    ]
    if rec.max_epochs is not None:
        blocks.append(Code(_run_config_yaml(rec.max_epochs), "yaml"))
    if feedback := feedback_rows(runs):
        blocks += [Heading(FEEDBACK_TITLE), Table(FEEDBACK_HEADERS, feedback)]
    return blocks


def comparison_markdown(runs: Sequence[RunSummary], rec: Recommendation, **names: Any) -> str:
    """The report for files and Dagster (keywords as ``comparison_blocks``)."""
    return render_markdown(comparison_blocks(runs, rec, **names))


def comparison_text(runs: Sequence[RunSummary], rec: Recommendation, **names: Any) -> str:
    """The same report as aligned plain text for a terminal."""
    return render_text(comparison_blocks(runs, rec, unicode=False, **names))


# --------------------------------------------------------------------------- chart


def comparison_png(runs: Sequence[RunSummary]) -> bytes:
    """Val text→audio R@5 and val loss vs epoch, one line per run; champion bold, best epoch ○."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), dpi=90)
    ax_r5, ax_loss = fig.subplots(1, 2)
    plotted = [r for r in runs if r.epochs]
    for i, r in enumerate(plotted):
        color = f"C{i % 10}"
        label = r.run_name + (" ★ champion" if r.is_champion else "")
        if not r.finished:
            label += f" ({r.status})"
        style = {
            "color": color,
            "linewidth": 3.0 if r.is_champion else 1.3,
            "alpha": 1.0 if r.is_champion else 0.75,
            "linestyle": "-" if r.finished else "--",
            "zorder": 3 if r.is_champion else 2,
        }
        epochs = [p.epoch for p in r.epochs]
        r5 = [p.val_recall.get(5, float("nan")) for p in r.epochs]
        loss = [float("nan") if p.val_loss is None else p.val_loss for p in r.epochs]
        ax_r5.plot(epochs, r5, marker=".", label=label, **style)
        ax_loss.plot(epochs, loss, marker=".", **style)
        best = r.best_point
        if best is not None:
            for ax, y in ((ax_r5, best.val_recall.get(5)), (ax_loss, best.val_loss)):
                if y is not None:
                    ax.plot([best.epoch], [y], "o", markersize=10, markerfacecolor="none",
                            markeredgecolor=color, markeredgewidth=1.8, zorder=4)  # fmt: skip
    ax_r5.set_title("validation text→audio R@5 (○ = best epoch)")
    ax_r5.set_ylim(0, 1.02)
    ax_loss.set_title("validation loss (symmetric InfoNCE)")
    for ax in (ax_r5, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if plotted:
        ax_r5.legend(fontsize=7, loc="lower right")
    else:
        for ax in (ax_r5, ax_loss):
            ax.text(0.5, 0.5, "no training runs yet", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- files and MLflow


def artifact_run(runs: Sequence[RunSummary]) -> RunSummary | None:
    """The run that receives the artifacts: the most recent finished one, else the most recent."""
    finished = [r for r in runs if r.finished]
    return (finished or list(runs) or [None])[-1]


def comparison_json(
    runs: Sequence[RunSummary],
    rec: Recommendation,
    *,
    experiment: str,
    tracking_uri: str,
    model_name: str = DEFAULT_REGISTERED_MODEL,
) -> dict[str, Any]:
    champ = next((r for r in runs if r.is_champion), None)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "registered_model": model_name,
        "champion_run_id": champ.run_id if champ else None,
        "recommendation": rec.to_dict(),
        "runs": [r.to_dict() for r in runs],
    }


def write_comparison(
    runs: Sequence[RunSummary],
    rec: Recommendation,
    reports_dir: Path,
    *,
    experiment: str,
    tracking_uri: str,
    model_name: str = DEFAULT_REGISTERED_MODEL,
    retrain_run_config: Path | None = None,
    png: bytes | None = None,
    log_to_mlflow: bool = True,
) -> ComparisonFiles:
    """Write ``reports/model_comparison.{md,png,json}`` atomically and log them to MLflow."""
    reports_dir = Path(reports_dir)
    names = {"experiment": experiment, "tracking_uri": tracking_uri, "model_name": model_name}
    md_path = write_text_atomic(
        reports_dir / f"{REPORT_STEM}.md",
        comparison_markdown(runs, rec, retrain_run_config=retrain_run_config, **names),
    )
    png_path = reports_dir / f"{REPORT_STEM}.png"
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(png if png is not None else comparison_png(runs))
    json_path = write_text_atomic(
        reports_dir / f"{REPORT_STEM}.json",
        json.dumps(comparison_json(runs, rec, **names), indent=1),
    )
    target = artifact_run(runs) if log_to_mlflow else None
    if target is not None:
        mlflow_client = tracking.client(tracking_uri)
        for path in (md_path, png_path, json_path):
            mlflow_client.log_artifact(
                target.run_id, str(path), artifact_path=run_names.COMPARISON_ARTIFACT
            )
    return ComparisonFiles(
        markdown=md_path,
        png=png_path,
        json=json_path,
        mlflow_run_id=target.run_id if target else None,
    )


def run_model_comparison(settings: Settings, recent: int, log: Log) -> dict[str, object]:
    """The `model_comparison` asset: every run side by side, written and logged; the metadata."""
    names = {
        "experiment": settings.mlflow_experiment,
        "tracking_uri": settings.mlflow_tracking_uri,
        "model_name": settings.registered_model,
    }
    runs = collect_runs(**names)
    rec = recommend_max_epochs(runs, recent)
    png = comparison_png(runs)
    files = write_comparison(
        runs, rec, settings.reports_dir, retrain_run_config=settings.retrain_run_config, png=png,
        **names,
    )  # fmt: skip
    champion = next((r for r in runs if r.is_champion), None)
    log(
        f"{len(runs)} training run(s); recommended max_epochs: {rec.max_epochs}; "
        f"artifacts logged to run {files.mlflow_run_id}"
    )
    return {
        "comparison": Markdown(files.markdown.read_text(encoding="utf-8")),
        "chart": Markdown(
            f"![validation R@5 and loss per epoch, one line per run]"
            f"(data:image/png;base64,{base64.b64encode(png).decode()})"
        ),
        "n_runs": len(runs),
        # None (shown as null): no finished run with a best epoch yet.
        "recommended_max_epochs": rec.max_epochs,
        "champion_run_id": champion.run_id if champion else "",
        "mlflow_run_id": files.mlflow_run_id or "",
        "report": Path(files.markdown),
        "chart_png": Path(files.png),
        "report_json": Path(files.json),
    }
