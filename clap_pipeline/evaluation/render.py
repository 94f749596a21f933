"""The evaluation report for people: tables (text for the terminal, Markdown for Dagster),
a verdict in plain sentences and a bar chart. Each table is built once (``tables.Table``)
and rendered either way.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from clap_pipeline import genre_search
from clap_pipeline.evaluation.checks import beats_random
from clap_pipeline.evaluation.inputs import WISE_FT
from clap_pipeline.evaluation.report import (
    EvaluationReport,
    GenreSearchReport,
    Interval,
    SimilarityReport,
    SplitRetrieval,
)
from clap_pipeline.metrics import (
    AUDIO_TO_TEXT,
    DIRECTIONS,
    KS,
    MAP_CUTOFF,
    MAP_NAME,
    MEAN_RANK,
    MEDIAN_RANK,
    METRIC_NAMES,
    RANK_METRICS,
    RECALL_NAMES,
    SELECTION_METRIC,
    TEXT_TO_AUDIO,
    recall_key,
    recall_name,
)
from clap_pipeline.reporting import Markdown
from clap_pipeline.tables import Table

CHART_NAME = "evaluation_chart.png"
SHORT_DIRECTION = {TEXT_TO_AUDIO: "text->audio", AUDIO_TO_TEXT: "audio->text"}
SHORT_METRIC = {
    **{recall_name(k): f"R@{k}" for k in KS},
    MEDIAN_RANK: "median rank",
    MEAN_RANK: "mean rank",
    MAP_NAME: f"mAP@{MAP_CUTOFF}",
}
MODEL_LABELS = {"zero_shot": "zero-shot", "fine_tuned": "fine-tuned", WISE_FT: "WiSE-FT"}


def model_label(report: EvaluationReport, model: str) -> str:
    """The column title of a model: the fine-tuned epoch, WiSE-FT's alpha."""
    if model == "fine_tuned":
        return f"fine-tuned (epoch {report.best_epoch})"
    if model == WISE_FT:
        return f"WiSE-FT (alpha {report.wise_ft_alpha:.2f})"
    return MODEL_LABELS.get(model, model)


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if metric in RANK_METRICS else f"{value:.3f}"


def fmt_ci(metric: str, stat: Interval | None) -> str:
    if stat is None:
        return "-"
    return f"{fmt(metric, stat.value)} [{fmt(metric, stat.ci_low)}, {fmt(metric, stat.ci_high)}]"


# --------------------------------------------------------------------------- tables


def retrieval_table(report: EvaluationReport, block: SplitRetrieval, indent: str = "") -> Table:
    models = list(block.models)
    headers = [
        "direction",
        "metric",
        *(model_label(report, m) for m in models),
        "random (exact)",
        "random (empirical)",
    ]
    rows = []
    for direction in DIRECTIONS:
        for name in METRIC_NAMES:
            key = f"{direction}_{name}"
            model_cells = [fmt_ci(name, block.models[m].metrics.get(key)) for m in models]
            rows.append(
                [
                    SHORT_DIRECTION[direction],
                    SHORT_METRIC[name],
                    *model_cells,
                    fmt(name, block.random.exact[key]),
                    fmt_ci(name, block.random.empirical[key]),
                ]
            )
    return Table(headers, rows, indent=indent)


def search_table(
    report: EvaluationReport,
    search: GenreSearchReport,
    split: str,
    indent: str = "",
    prior: str = "genre prior (random)",
) -> Table:
    """Genre or instrument search of one split: each query and score, each model, the prior."""
    block = search.splits[split]
    models = list(block.models)
    rows = []
    for query_name, template in search.queries.items():
        for score in genre_search.SCORE_NAMES:
            rows.append(
                [
                    template.format(genre="<genre>", instrument="<instrument>"),
                    score.replace("_at_", "@").replace("_", " "),
                    *(fmt_ci("s", block.models[m][query_name].scores[score]) for m in models),
                    fmt_ci("s", block.prior.scores[score]),
                ]
            )
    headers = ["query", "score", *(model_label(report, m) for m in models), prior]
    return Table(headers, rows, indent=indent)


def genre_search_table(report: EvaluationReport, split: str, indent: str = "") -> Table:
    return search_table(report, report.genre_search, split, indent)


SIMILARITY_ROWS = {"all": "all other clips", "other_artists": "other artists' clips only"}


def similarity_table(report: EvaluationReport, split: str, indent: str = "") -> Table:
    """The "more like this" table of one split: genre precision@k per pool, models, prior."""
    similarity = report.similarity
    block = similarity.splits[split]
    rows = [
        [
            SIMILARITY_ROWS[kind],
            *(fmt_ci("s", block.models[m].get(kind)) for m in block.models),
            fmt("s", block.prior.get(kind)),
        ]
        for kind in similarity.filters
    ]
    headers = ["candidates", *(model_label(report, m) for m in block.models), "genre prior"]
    return Table(headers, rows, indent=indent)


def _similarity_title(similarity: SimilarityReport, split: str) -> str:
    block = similarity.splits[split]
    return (
        f"more like this (audio->audio), {split} split: share of a clip's {similarity.k} "
        f"nearest clips that are of its genre, {block.n_queries} clips queried "
        f"({block.same_artist_pairs} same-artist pairs left out of the second row)"
    )


def qualitative_table(report: EvaluationReport) -> Table:
    qual = report.qualitative
    names = [c.name for c in qual.columns]
    rows = []
    for row in qual.rows:
        cells: list[object] = [row.track_id, row.prompt]
        for name in names:
            r = row.results.get(name)
            cells.append(
                "not kept"
                if r is None
                else f"{'✓' if r.correct else '✗'} {r.top1_prompt} ({r.score:.3f})"
            )
        rows.append(cells)
    return Table(["track", "true prompt", *names], rows)


RULE_LABELS = {"first": "first window only", "mean": "mean of windows", "max": "best window (max)"}
WHOLE_TRACK_ROWS = (
    *((f"text->audio R@{k}", "retrieval", recall_key(k)) for k in KS),
    ("audio->text R@5", "retrieval", recall_key(5, AUDIO_TO_TEXT)),
    ("<genre> music p@10", "genre_search", None),
    ("<instrument> music p@10", "instrument_search", None),
)


def whole_track_table(report: EvaluationReport, split: str, indent: str = "") -> Table:
    """Track-level scores of one split: each metric per window-aggregation rule and model."""
    block = report.whole_track.splits[split]
    models = list(block.retrieval)
    rows = []
    for label, part, key in WHOLE_TRACK_ROWS:
        values = getattr(block, part)
        if not any(values.get(m) for m in models):
            continue  # no genre / instrument with enough tracks
        for rule in report.whole_track.rules:
            cells = []
            for m in models:
                stat = values.get(m, {}).get(rule)
                cells.append(fmt_ci("s", stat[key] if key and stat else stat))
            rows.append([label, RULE_LABELS[rule], *cells])
    headers = ["metric", "a track's score", *(model_label(report, m) for m in models)]
    return Table(headers, rows, indent=indent)


def whole_track_lines(report: EvaluationReport) -> list[str]:
    """The whole-track tables and the rule search uses (nothing for older reports)."""
    whole = report.whole_track
    if whole is None:
        return []
    lines = []
    for split, block in whole.splits.items():
        lines.append(
            f"whole tracks, {split} split ({block.n_tracks} tracks, {block.n_windows} windows "
            "of 5 s): a track's score from its windows' scores"
        )
        lines.append(whole_track_table(report, split, indent="  ").text())
    lines.append(f"search scores a track by: {RULE_LABELS[whole.chosen]} ({whole.chosen_by})")
    return lines


def moments_table(report: EvaluationReport, split: str, indent: str = "") -> Table:
    """Moment accuracy of one split: each model with its interval, then chance."""
    block = report.moments.splits[split]
    rows = [[model_label(report, m), fmt_ci("s", stat)] for m, stat in block.models.items()]
    rows.append(["chance (the section's share of the windows)", fmt("s", block.chance)])
    return Table(["model", "moment accuracy"], rows, indent=indent)


def _moments_title(report: EvaluationReport, split: str) -> str:
    block = report.moments.splits[split]
    return (
        f"moment accuracy, {split} split: share of {block.n_sections} sections "
        f"({block.n_tracks} tracks) whose query {report.moments.query!r} finds the track's "
        "best window inside the section"
    )


def moments_lines(report: EvaluationReport) -> list[str]:
    """The moment-accuracy tables (nothing without a sections table)."""
    lines = []
    for split in report.moments.splits if report.moments else ():
        lines += [_moments_title(report, split), moments_table(report, split, "  ").text()]
    return lines


def _split_title(block: SplitRetrieval, split: str) -> str:
    missing = f", {len(block.missing_track_ids)} missing" if block.missing_track_ids else ""
    return f"{split} split (N = {block.n} of {block.n_expected}{missing})"


# --------------------------------------------------------------------------- terminal


def _genre_classification_text(report: EvaluationReport) -> list[str]:
    genre = report.genre
    if not genre.genres:
        return []
    lines = ["", f"zero-shot genre classification, prompt {genre.prompt_template!r}:"]
    for split, gblock in genre.splits.items():
        if not gblock.models:
            continue
        accuracies = ", ".join(
            f"{MODEL_LABELS[m]} {fmt_ci('acc', result.interval)}"
            for m, result in gblock.models.items()
        )
        lines.append(
            f"  {split}: {len(genre.genres)} genres, N = {gblock.n}: accuracy {accuracies}, "
            f"chance {gblock.chance_accuracy:.3f}, majority {gblock.majority_accuracy:.3f}"
        )
    return lines


def _search_text(report: EvaluationReport) -> list[str]:
    """Genre search, instrument search and 'more like this', each split a table."""
    search, lines = report.genre_search, []
    for split, sblock in search.splits.items():
        if sblock.models:
            lines.append(
                f"genre search, {split} split: each genre with >= {search.min_tracks} clips "
                f"({len(sblock.genres)}) queried, averaged over genres"
            )
            lines.append(genre_search_table(report, split, indent="  ").text())
    instruments = report.instrument_search
    for split, sblock in instruments.splits.items() if instruments else ():
        if sblock.models:
            lines.append(
                f"instrument search, {split} split: each instrument its tags name on >= "
                f"{instruments.min_tracks} clips ({len(sblock.genres)}) queried, averaged "
                "over instruments"
            )
            prior = "instrument prior (random)"
            lines.append(search_table(report, instruments, split, "  ", prior).text())
    similarity = report.similarity
    for split, mblock in similarity.splits.items() if similarity else ():
        if mblock.models:
            lines.append(_similarity_title(similarity, split))
            lines.append(similarity_table(report, split, "  ").text())
    return ["", *lines] if lines else []


def format_evaluation_table(report: EvaluationReport) -> str:
    """The report as plain text for the terminal (``make demo`` prints it)."""
    conf = report.config.confidence
    lines = [
        f"Evaluation of {report.model_source} (zero-shot) vs the fine-tuned best epoch "
        f"{report.best_epoch} (MLflow run {report.mlflow_run_id})"
        + (
            ""
            if report.wise_ft_alpha is None
            else f" and WiSE-FT's interpolation of the two at alpha {report.wise_ft_alpha:.2f} "
            "(the registered weights)"
        ),
        f"values with bootstrap {conf:.0%} intervals [low, high]; ranks are 1-based, "
        "ties count against the match",
    ]
    for split, block in report.splits.items():
        lines += ["", _split_title(block, split)]
        if not block.n:
            lines.append("  (no clips)")
            continue
        lines.append(retrieval_table(report, block, indent="  ").text())
    lines += _genre_classification_text(report) + _search_text(report)
    whole = whole_track_lines(report) + moments_lines(report)
    if whole:
        lines += ["", *whole]
    ok, detail = beats_random(report)
    lines += ["", ("OK: " if ok else "WARNING: ") + detail, "", *verdict_lines(report)]
    return "\n".join(lines)


def _beats(stat: Interval, reference: float) -> bool:
    return stat.ci_low > reference


def _retrieval_verdict(block) -> tuple[list[str], bool]:
    """R@5 both ways against zero-shot and chance (judged), clips sharing a prompt (shown)."""
    lines, helps = [], True
    for direction, what in (
        (TEXT_TO_AUDIO, "finding a clip from its own description"),
        (AUDIO_TO_TEXT, "finding the description of a clip"),
    ):
        key = recall_key(5, direction)
        tuned = block.stat("fine_tuned", key)
        zero = block.stat("zero_shot", key).value
        chance = block.random.exact[key]
        ok = _beats(tuned, chance) and tuned.value > zero
        helps &= ok
        lines.append(
            f"  - {what} (R@5, {SHORT_DIRECTION[direction]}): fine-tuned {fmt_ci('r', tuned)} "
            f"vs zero-shot {zero:.3f} vs random {chance:.3f}"
            + ("" if ok else "  <- not clearly better")
        )
    merged = block.identical_prompts
    if merged.models.get("fine_tuned"):
        tuned_merged = merged.models["fine_tuned"]
        lines.append(
            f"    ({merged.n_clips_sharing} of {block.n} clips share their exact prompt with "
            "another clip; counting those as hits too: fine-tuned R@5 text->audio "
            f"{tuned_merged[SELECTION_METRIC].value:.3f}, audio->text "
            f"{tuned_merged[recall_key(5, AUDIO_TO_TEXT)].value:.3f})"
        )
    return lines, helps


def _search_verdict(report: EvaluationReport, split: str) -> tuple[list[str], bool]:
    """Genre search (judged) and instrument search (shown) against zero-shot and the prior."""
    lines, helps = [], True
    for search, query, what in (
        (report.genre_search, "genre_music", "genre"),
        (report.instrument_search, "instrument_music", "instrument"),
    ):
        sblock = search.splits.get(split) if search else None
        if search is None or sblock is None or not sblock.models.get("fine_tuned"):
            continue
        score = search.precision_name
        template = search.queries[query]
        tuned = sblock.models["fine_tuned"][query].scores[score]
        zero = sblock.models["zero_shot"][query].scores[score].value
        prior = sblock.prior.scores[score].value
        ok = _beats(tuned, sblock.prior.scores[score].ci_high) and tuned.value > zero
        # Judged: retrieval and genre search (the rule below). Instrument search is shown
        # beside them: prompts name instruments in some templates only (their tags).
        helps &= ok or what == "instrument"
        lines.append(
            f"  - searching {template.format(**{what: f'<{what}>'})!r} over "
            f"{len(sblock.genres)} {what}s: {tuned.value:.0%} of the top {search.k} "
            f"{'are of that genre' if what == 'genre' else 'play it'} "
            f"[{tuned.ci_low:.0%}, {tuned.ci_high:.0%}], vs {zero:.0%} zero-shot "
            f"and {prior:.0%} by chance (the {what}s' share)"
            + ("" if ok else "  <- not clearly better")
            + ("" if ok or what == "genre" else " (shown, not judged)")
        )
    return lines, helps


def verdict_lines(report: EvaluationReport, split: str = "test") -> list[str]:
    """A few sentences a newcomer can read: does fine-tuning help, and how sure are we."""
    block = report.evaluated(split)
    if block is None:
        return [f"Verdict: no {split} clips, nothing to judge."]
    conf = f"{report.config.confidence:.0%}"
    lines = [f"Verdict on the {split} split ({block.n} clips the model never trained on):"]
    retrieval, retrieval_helps = _retrieval_verdict(block)
    search, search_helps = _search_verdict(report, split)
    lines += retrieval + search
    lines += similarity_verdict(report, split) + moments_verdict(report, split)
    lines += wise_ft_verdict(report, split)
    lines.append(
        f"  => fine-tuning helps: every fine-tuned number beats zero-shot, and its {conf} "
        "interval lies above chance."
        if retrieval_helps and search_helps
        else f"  => not shown: at least one number above is not clearly better (its {conf} "
        "interval reaches chance, or zero-shot is as good). More tracks or epochs may help."
    )
    return lines


def wise_ft_verdict(report: EvaluationReport, split: str) -> list[str]:
    """WiSE-FT's line of the verdict: the registered weights beside the two they mix."""
    block = report.evaluated(split)
    if report.wise_ft_alpha is None or block is None or WISE_FT not in block.models:
        return []
    names = ["R@5 text->audio", "R@5 audio->text"]
    columns = [lambda m, d=d: f"{block.stat(m, recall_key(5, d)).value:.3f}" for d in DIRECTIONS]
    for search, query, what in (
        (report.genre_search, "genre_music", "genre search"),
        (report.instrument_search, "instrument_music", "instrument search"),
    ):
        sblock = search.splits.get(split) if search else None
        if sblock is not None and WISE_FT in sblock.models:
            names.append(what)
            columns.append(
                lambda m, b=sblock, q=query, s=search.precision_name: (
                    f"{b.models[m][q].scores[s].value:.0%}"
                )
            )
    cells = [
        f"{MODEL_LABELS[m]} {' / '.join(c(m) for c in columns)}"
        for m in ("zero_shot", "fine_tuned", WISE_FT)
    ]
    return [
        f"  - WiSE-FT, alpha {report.wise_ft_alpha:.2f} chosen on validation (the registered "
        f"weights; alpha 1 = fine-tuned), {' / '.join(names)}: {'; '.join(cells)} "
        "(shown, not judged)"
    ]


def similarity_verdict(report: EvaluationReport, split: str) -> list[str]:
    """The "more like this" line of the verdict (shown, not judged)."""
    sim = report.similarity.splits.get(split) if report.similarity else None
    if sim is None or "fine_tuned" not in sim.models:
        return []
    tuned, zero = sim.models["fine_tuned"], sim.models["zero_shot"]
    return [
        f"  - 'more like this' (audio->audio): {tuned['all'].value:.0%} of a clip's "
        f"{report.similarity.k} nearest clips are of its genre (zero-shot "
        f"{zero['all'].value:.0%}, chance {sim.prior['all']:.0%}); with its artist's other "
        f"clips left out {tuned['other_artists'].value:.0%} "
        f"[{tuned['other_artists'].ci_low:.0%}, {tuned['other_artists'].ci_high:.0%}] "
        f"(zero-shot {zero['other_artists'].value:.0%}, chance "
        f"{sim.prior['other_artists']:.0%}) (shown, not judged)"
    ]


def moments_verdict(report: EvaluationReport, split: str) -> list[str]:
    """The moment line of the verdict (shown, not judged): does a query land in its section?"""
    block = report.moments.splits.get(split) if report.moments else None
    if block is None or "fine_tuned" not in block.models:
        return []
    tuned, zero = block.models["fine_tuned"], block.models["zero_shot"]
    above = "above" if tuned.ci_low > block.chance else "not clearly above"
    return [
        f"  - moments: '<genre> music' finds its section's window in {tuned.value:.0%} "
        f"[{tuned.ci_low:.0%}, {tuned.ci_high:.0%}] of {block.n_sections} sections, {above} "
        f"chance {block.chance:.0%} (zero-shot {zero.value:.0%}) (shown, not judged)"
    ]


# --------------------------------------------------------------------------- Markdown


def retrieval_markdown(report: EvaluationReport) -> str:
    parts = []
    for split, block in report.splits.items():
        parts.append(f"**{_split_title(block, split)}**\n")
        parts.append(retrieval_table(report, block).markdown() if block.n else "(none)")
        parts.append("")
    parts.append(
        f"Bootstrap {report.config.confidence:.0%} intervals over per-query ranks; random "
        "(exact) = k/N, random (empirical) = seeded random rankings of the same N."
    )
    return "\n".join(parts)


def qualitative_markdown(report: EvaluationReport) -> str:
    qual = report.qualitative
    if not qual.rows:
        return "(no clips)"
    shown = len(qual.columns) - 1
    sampled = (
        f", at {shown} of {qual.n_epochs} epochs (first, best, last and evenly spaced between)"
        if qual.n_epochs > shown
        else ""
    )
    title = f"Top-1 retrieved prompt for the first {len(qual.rows)} {qual.split} clips{sampled}\n\n"
    return title + qualitative_table(report).markdown()


def genre_markdown(report: EvaluationReport) -> str:
    genre = report.genre
    if not genre.genres:
        return "(no genre_top among the evaluated tracks)"
    parts = [f"Prompt: `{genre.prompt_template}` over {len(genre.genres)} genres\n"]
    for split, block in genre.splits.items():
        if not block.models:
            continue
        acc_rows = [
            [model_label(report, m), fmt_ci("acc", block.models[m].interval)] for m in block.models
        ]
        acc_rows += [
            ["chance (1/G)", f"{block.chance_accuracy:.3f}"],
            ["majority class", f"{block.majority_accuracy:.3f}"],
        ]
        parts += [
            f"**{split}** (N = {block.n})\n",
            Table(["model", "accuracy"], acc_rows).markdown(),
        ]
        for m in block.models:
            confusion = block.models[m].confusion
            rows = [[g, *counts] for g, counts in zip(genre.genres, confusion, strict=True)]
            parts += [
                f"\n{model_label(report, m)} confusion (rows = true genre, columns = predicted)\n",
                Table(["true \\ predicted", *genre.genres], rows).markdown(),
            ]
        parts.append("")
    return "\n".join(parts)


def similarity_markdown(report: EvaluationReport) -> str:
    similarity = report.similarity
    parts = []
    for split, block in similarity.splits.items() if similarity else ():
        if block.models:
            parts += [
                f"**{_similarity_title(similarity, split)}**\n",
                similarity_table(report, split).markdown(),
                "",
            ]
    return "\n".join(parts) or "(no split with a genre on 2 or more clips)"


def moments_markdown(report: EvaluationReport) -> str:
    parts = []
    for split in report.moments.splits if report.moments else ():
        parts += [f"**{_moments_title(report, split)}**\n", moments_table(report, split).markdown()]
    return "\n".join(parts) or "(no sections table: moment accuracy not measured)"


def genre_search_markdown(report: EvaluationReport) -> str:
    search = report.genre_search
    if not any(b.models for b in search.splits.values()):
        return f"(no genre with >= {search.min_tracks} clips in a split)"
    parts = []
    for split, block in search.splits.items():
        if not block.models:
            continue
        parts += [
            f"**{split}** (N = {block.n}, genres: {', '.join(block.genres)})\n",
            genre_search_table(report, split).markdown(),
            "",
        ]
    parts.append(
        f"Precision@{search.k} and average precision of the genre's clips among the split's "
        "clips, macro-averaged over genres; bootstrap intervals over clips; the prior is a "
        "random ranking (precision@k = the genre's share)."
    )
    return "\n".join(parts)


# --------------------------------------------------------------------------- chart


def comparison_chart_png(report: EvaluationReport, split: str = "test") -> bytes:
    """Grouped bars of R@1/5/10 and mAP@10, zero-shot vs fine-tuned vs random, per direction."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    block = report.splits[split]
    names = [*RECALL_NAMES, MAP_NAME]
    fig = Figure(figsize=(9, 3.4), dpi=90)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(names))
    width = 0.27
    for ax, direction in zip(axes, DIRECTIONS, strict=True):
        series = [
            ("zero-shot", block.models["zero_shot"].metrics, "tab:gray"),
            (f"fine-tuned (epoch {report.best_epoch})", block.models["fine_tuned"].metrics,
             "tab:blue"),
            ("random (empirical)", block.random.empirical, "tab:red"),
        ]  # fmt: skip
        for i, (label, stats, color) in enumerate(series):
            picked = [stats[f"{direction}_{n}"] for n in names]
            values = np.array([s.value for s in picked])
            lows = np.array([s.ci_low for s in picked])
            highs = np.array([s.ci_high for s in picked])
            ax.bar(x + (i - 1) * width, values, width, label=label, color=color,
                   yerr=[values - lows, highs - values], capsize=2)  # fmt: skip
        exact = [block.random.exact[f"{direction}_{n}"] for n in names]
        ax.scatter(x + width, exact, marker="_", s=200, color="black", label="random k/N", zorder=3)
        ax.set_xticks(x, [SHORT_METRIC[n] for n in names])
        ax.set_title(f"{SHORT_DIRECTION[direction]} ({split}, N={block.n})")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def chart_markdown(png: bytes) -> str:
    return f"![zero-shot vs fine-tuned vs random](data:image/png;base64,{base64.b64encode(png).decode()})"


def evaluation_metadata(report: EvaluationReport, report_path: Path) -> dict[str, object]:
    """The `evaluation` asset's materialization metadata: tables, verdict, headline numbers."""
    metadata: dict[str, object] = {
        "report": Path(report_path),
        "mlflow_run_id": report.mlflow_run_id,
        "retrieval": Markdown(retrieval_markdown(report)),
        "qualitative": Markdown(qualitative_markdown(report)),
        "genre_classification": Markdown(genre_markdown(report)),
        "genre_search": Markdown(genre_search_markdown(report)),
        "more_like_this": Markdown(similarity_markdown(report)),
        "moment_accuracy": Markdown(moments_markdown(report)),
        "verdict": Markdown("\n".join(verdict_lines(report))),
        "device": report.device,
        "seconds": report.seconds,
    }
    for split, block in report.splits.items():
        metadata[f"n_{split}"] = block.n
    test = report.evaluated("test")
    if test is not None:
        metadata["comparison_chart"] = Markdown(chart_markdown(comparison_chart_png(report)))
        for k in KS:
            key = recall_key(k)
            metadata[f"test_{key}"] = test.stat("fine_tuned", key).value
            metadata[f"zeroshot_test_{key}"] = test.stat("zero_shot", key).value
            metadata[f"random_test_{recall_name(k)}"] = test.random.exact[key]
    search = report.genre_search
    test_search = search.splits["test"]
    if test_search.prior is not None:
        score = search.precision_name
        for key, prefix in (("fine_tuned", ""), ("zero_shot", "zeroshot_")):
            value = test_search.models[key]["genre_music"].scores[score].value
            metadata[f"{prefix}test_genre_search_{score}"] = value
        metadata[f"prior_test_genre_search_{score}"] = test_search.prior.scores[score].value
    return metadata
