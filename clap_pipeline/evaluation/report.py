"""The evaluation report as typed data: split -> model -> metric with interval, genres,
examples; one ``to_json``/``from_json`` for ``reports/evaluation.json``.

Shape (keys as in the JSON file)::

    EvaluationReport
      splits: {"test" | "validation": SplitRetrieval}
        models: {"zero_shot" | "fine_tuned": ModelScores}   source + metrics
          metrics: {"text_to_audio_recall_at_5": Interval, ...}  value, ci_low, ci_high
        random: RandomBaseline (exact k/N, empirical with interval)
        identical_prompts: the same scores with clips of identical prompt text merged
      genre: GenreClassification         accuracy + confusion per split and model
      genre_search: GenreSearchReport    precision@k / AP per split, model and query
      instrument_search: GenreSearchReport   the same for "<instrument> music" (tags)
      similarity: SimilarityReport       audio->audio genre precision@10, all clips and
                                         other artists only, per split and model
      moments: MomentReport              share of section queries whose best window is
                                         inside the section, per split and model
      qualitative: QualitativeReport     top-1 prompt of the first clips per sampled epoch

``ModelScores``, ``GenreSearchScores`` and ``GenreSearchPrior`` keep their scores flat
in the JSON (``{"source": ..., "text_to_audio_recall_at_1": {...}}``), as the file
always had; every other class maps field for field.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from clap_pipeline import genre_search
from clap_pipeline.evaluation.inputs import EvalConfig, EvaluationError
from clap_pipeline.metrics import RANK_METRICS
from clap_pipeline.storage import write_text_atomic


@dataclass(frozen=True)
class Interval:
    """A metric's value with its bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float


# --------------------------------------------------------------------------- retrieval


@dataclass
class ModelScores:
    """One model on one split: where it was loaded from and its retrieval metrics."""

    source: str
    metrics: dict[str, Interval]  # "<direction>_<metric>", e.g. text_to_audio_recall_at_5

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, **_encode(self.metrics)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelScores:
        rest = {k: v for k, v in data.items() if k != "source"}
        return cls(source=data["source"], metrics=_decode(dict[str, Interval], rest))


@dataclass
class RandomBaseline:
    exact: dict[str, float]  # k/N and the rank expectations of a random ranking
    empirical: dict[str, Interval]  # seeded random rankings of the same N


@dataclass
class IdenticalPrompts:
    n_clips_sharing: int
    convention: str
    models: dict[str, dict[str, Interval]] = field(default_factory=dict)


@dataclass
class SplitRetrieval:
    n: int
    n_expected: int
    missing_track_ids: list[int]
    models: dict[str, ModelScores]
    random: RandomBaseline | None  # None: no clips
    identical_prompts: IdenticalPrompts

    def stat(self, model: str, key: str) -> Interval:
        """``key`` (``text_to_audio_recall_at_5``) of ``model`` (``fine_tuned``)."""
        return self.models[model].metrics[key]


# --------------------------------------------------------------------------- genres


@dataclass
class GenreAccuracy:
    accuracy: float
    ci_low: float
    ci_high: float
    confusion: list[list[int]]  # rows = true genre, columns = predicted

    @property
    def interval(self) -> Interval:
        return Interval(self.accuracy, self.ci_low, self.ci_high)


@dataclass
class GenreSplit:
    n: int  # clips with a genre among the label set
    n_without_genre: int
    chance_accuracy: float | None
    majority_accuracy: float | None
    counts: list[int]
    models: dict[str, GenreAccuracy] = field(default_factory=dict)


@dataclass
class GenreClassification:
    prompt_template: str
    genres: list[str]
    tie_rule: str
    splits: dict[str, GenreSplit]


@dataclass
class GenreSearchScores:
    """One model and one query template: macro scores with intervals, per-genre values."""

    scores: dict[str, Interval]  # precision_at_<k>, average_precision
    per_genre: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {**_encode(self.scores), "per_genre": self.per_genre}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenreSearchScores:
        scores = {k: v for k, v in data.items() if k != "per_genre"}
        return cls(scores=_decode(dict[str, Interval], scores), per_genre=data["per_genre"])


@dataclass
class GenreSearchPrior:
    """The genre-prior baseline (random rankings): scores and each genre's share."""

    scores: dict[str, Interval]
    shares: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {**_encode(self.scores), "shares": self.shares}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenreSearchPrior:
        scores = {k: v for k, v in data.items() if k != "shares"}
        return cls(scores=_decode(dict[str, Interval], scores), shares=data["shares"])


@dataclass
class GenreSearchSplit:
    n: int
    genres: list[str]  # genres with enough clips to be queried
    prior: GenreSearchPrior | None
    models: dict[str, dict[str, GenreSearchScores]] = field(default_factory=dict)  # model, query


@dataclass
class GenreSearchReport:
    queries: dict[str, str]  # query name -> template with {genre}
    k: int
    min_tracks: int
    splits: dict[str, GenreSearchSplit]

    @property
    def precision_name(self) -> str:
        return genre_search.precision_name(self.k)


# --------------------------------------------------------------------------- similarity


@dataclass
class SimilaritySplit:
    n_queries: int  # clips with a genre
    same_artist_pairs: int  # (query, candidate) pairs the artist filter removes
    prior: dict[str, float] = field(default_factory=dict)  # filter -> random ranking's precision
    models: dict[str, dict[str, Interval]] = field(default_factory=dict)  # model -> filter


@dataclass
class SimilarityReport:
    k: int
    filters: list[str]  # "all", "other_artists"
    splits: dict[str, SimilaritySplit]


# --------------------------------------------------------------------------- whole tracks


@dataclass
class WholeTrackSplit:
    """One split's tracks scored from all their windows, per model and aggregation rule."""

    n_tracks: int
    n_windows: int
    # model -> rule -> "<direction>_<metric>" (both directions, every retrieval metric)
    retrieval: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)
    # model -> rule -> precision@k of "<genre> music" / "<instrument> music" (macro)
    genre_search: dict[str, dict[str, Interval]] = field(default_factory=dict)
    instrument_search: dict[str, dict[str, Interval]] = field(default_factory=dict)


@dataclass
class WholeTrackReport:
    """Track-level retrieval and search with each window-aggregation rule (whole_track.py)."""

    rules: list[str]  # window_embeddings.AGGREGATIONS
    chosen: str  # the rule search uses
    chosen_by: str  # how the measurement chose it
    splits: dict[str, WholeTrackSplit]


# --------------------------------------------------------------------------- moments


@dataclass
class MomentSplit:
    """Moment accuracy on one split's sectioned tracks (``evaluation/moments.py``)."""

    n_sections: int  # sections asked (of the split's tracks that have windows)
    n_tracks: int
    chance: float  # mean share of a track's windows that start inside the named section
    models: dict[str, Interval] = field(default_factory=dict)  # share found inside it


@dataclass
class MomentReport:
    query: str  # "{genre} music": each section's query
    splits: dict[str, MomentSplit]


# --------------------------------------------------------------------------- qualitative


@dataclass
class Top1:
    top1_track_id: int
    top1_prompt: str
    score: float
    correct: bool  # the retrieved prompt's text is the clip's own


@dataclass
class QualitativeColumn:
    name: str  # "zero-shot", "epoch 3", "epoch 4 (best)"
    epoch: int
    kept: bool  # False: that epoch's checkpoint was not kept


@dataclass
class QualitativeRow:
    track_id: int
    prompt: str
    results: dict[str, Top1 | None]  # column name -> top-1 (None: not kept)


@dataclass
class QualitativeReport:
    split: str | None
    rows: list[QualitativeRow] = field(default_factory=list)
    columns: list[QualitativeColumn] = field(default_factory=list)
    n_epochs: int = 0  # epochs trained; columns show a sample of them (first, best, last, ...)


# --------------------------------------------------------------------------- the report


@dataclass
class MlflowLogged:
    run_id: str
    tracking_uri: str
    metrics: list[str]


@dataclass
class EvaluationReport:
    created_at: str
    mlflow_run_id: str
    model_source: str
    best_checkpoint: str
    best_epoch: int
    device: str
    config: EvalConfig
    conventions: dict[str, str]
    splits: dict[str, SplitRetrieval]
    genre: GenreClassification
    genre_search: GenreSearchReport
    qualitative: QualitativeReport
    seconds: float
    mlflow: MlflowLogged | None = None  # None: not logged (left out of the JSON)
    # Instrument search ("<instrument> music", instruments named by the tracks' tags);
    # None in reports written before it existed.
    instrument_search: GenreSearchReport | None = None
    # "More like this": audio->audio genre precision, with the query's artist left out too.
    similarity: SimilarityReport | None = None
    # WiSE-FT's alpha when training kept interpolated weights (model "wise_ft" in every
    # block; 1.0 = the fine-tuned weights); None: training did not interpolate.
    wise_ft_alpha: float | None = None
    # Whole tracks: each track scored from all its windows; None in older reports.
    whole_track: WholeTrackReport | None = None
    # Does a query land in the section it names? None without a sections table.
    moments: MomentReport | None = None

    def evaluated(self, split: str) -> SplitRetrieval | None:
        """The split's retrieval block when it has clips, else None."""
        block = self.splits.get(split)
        return block if block is not None and block.n else None

    def to_json(self) -> dict[str, Any]:
        out = _encode(self)
        if self.mlflow is None:
            del out["mlflow"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationReport:
        return _decode(cls, data)

    def write(self, path: Path) -> Path:
        """``path`` written atomically."""
        return write_text_atomic(path, json.dumps(self.to_json(), indent=1))


def load_report(path: Path) -> EvaluationReport:
    """``reports/evaluation.json`` read back (clear error naming the file)."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"{path} does not exist: materialize the `evaluation` asset first")
    try:
        return EvaluationReport.from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            f"{path} is not valid JSON ({exc}): re-materialize `evaluation`"
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise EvaluationError(
            f"{path} does not match the report's shape ({type(exc).__name__}: {exc}): "
            "re-materialize `evaluation`"
        ) from exc


def metric_bounds(key: str, n: int) -> tuple[float, float]:
    """Valid range of a retrieval metric on N clips: ranks in [1, N], the rest in [0, 1]."""
    metric = key.split("_", 3)[-1]
    return (1.0, float(n)) if metric in RANK_METRICS else (0.0, 1.0)


# --------------------------------------------------------------------------- JSON mapping


def _encode(value: Any) -> Any:
    if hasattr(value, "to_json") and not isinstance(value, EvaluationReport):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(tp: Any, data: Any) -> Any:
    """``data`` (parsed JSON) as type ``tp``: dataclasses, dict/list of them, optionals."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, data)
    if origin is dict:
        _, value_type = typing.get_args(tp)
        return {k: _decode(value_type, v) for k, v in data.items()}
    if origin is list:
        (item_type,) = typing.get_args(tp)
        return [_decode(item_type, v) for v in data]
    if isinstance(tp, type) and is_dataclass(tp):
        if "from_json" in vars(tp) and tp is not EvaluationReport:
            return tp.from_json(data)
        hints = typing.get_type_hints(tp)
        return tp(
            **{f.name: _decode(hints[f.name], data[f.name]) for f in fields(tp) if f.name in data}
        )
    return data
