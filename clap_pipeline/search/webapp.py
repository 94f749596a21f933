"""HTTP layer of the search service (FastAPI): routes, status codes and the web page.

The work is in ``clap_pipeline.search.service``; this module maps it onto HTTP:

- ``GET /api/health``: model version, number of indexed tracks, index kind;
- ``GET /api/search?q=TEXT&k=N[&mode=hybrid|audio|text][&genre=&year_min=&year_max=&license=
  &max_duration=]``: ranked results among the tracks that pass the filters
  (``search.filters``), ranked as ``search/engine.py`` says;
- ``GET /api/tracks/{id}/similar?k=N[&start_s=S]``: audio->audio neighbours (by the
  track's windows, or its moment at ``S`` seconds, when the index has window embeddings);
- ``POST /api/search/audio?k=N[&filters]``: the body is an audio file (MP3, WAV, FLAC, OGG);
  the tracks that sound like its windows, answered like ``/similar``;
- ``GET /api/tracks/{id}/audio``: the clip, with Range requests (206) for seeking;
- ``POST /api/feedback``: ``{query, track_id, relevant}`` into DuckDB ``search_feedback``
  (bearer token when one is set, rate limit per client: ``search/write_guard.py``),
  answered once the row is committed by the service's one writer (``feedback_writer.py``;
  503 with ``Retry-After`` when its queue is full);
- ``GET /``: the page (``static/index.html``), which renders metadata as text only.

Contract: every constraint is in the OpenAPI schema (``/openapi.json``), every status
code is documented with its body, and every error has one shape, ``ErrorBody``
(``{"detail": [{"loc", "msg", "type"}]}``, FastAPI's 422 included). A Schemathesis run
against the real server checks it (clap_pipeline_tests/search/test_contract.py).

Run it with ``clap-pipeline serve`` (uvicorn, 127.0.0.1:8000 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from clap_pipeline.config import ServeSettings
from clap_pipeline.dataset import MAX_TRACK_ID
from clap_pipeline.feedback import MAX_QUERY_CHARS
from clap_pipeline.knobs import knob_of
from clap_pipeline.search.engine import MAX_K, Result, Searcher
from clap_pipeline.search.feedback_writer import RETRY_AFTER_S, FeedbackBusy
from clap_pipeline.search.filters import (
    DEFAULT_MODE,
    LICENSE_CLASSES,
    MAX_GENRE_LENGTH,
    MAX_LICENSE_LENGTH,
    MAX_YEAR,
    MIN_YEAR,
    MODES,
    Filters,
    TrackNotFoundError,
)
from clap_pipeline.search.options import QueryOptions
from clap_pipeline.search.service import AudioQueryError, SearchService
from clap_pipeline.search.window_ranker import Moment, MomentNotFoundError
from clap_pipeline.search.write_guard import (
    RateLimiter,
    check_listen,
    client_key,
    token_matches,
)
from clap_pipeline.storage import DuckDBLockTimeout

PAGE = Path(__file__).with_name("static") / "index.html"
AUDIO_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
}
Mode = Literal[MODES]  # type: ignore[valid-type]
MODE_HELP = knob_of(QueryOptions, "mode").help
NOT_BLANK = r"\S"  # at least one non-whitespace character (the service strips the text)
MAX_DURATION_S = 1_000_000.0


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: e.g. [query, q] or [path, track_id]")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API has this shape (FastAPI's validation errors too)."""

    detail: list[ErrorItem]


class Timeline(BaseModel):
    start_s: list[float] = Field(description="each window's start (seconds), in time order")
    scores: list[float] = Field(description="each window's cosine to the query")


class SearchResult(BaseModel):
    rank: int
    track_id: int
    title: str | None
    artist: str | None
    genre: str | None = Field(description="FMA's top-level genre (track.genre_top)")
    score: float = Field(
        description="the mode's score: cosine of the query and the track's audio (audio, "
        "/similar), BM25 of the query's words in its names (text), or the reciprocal rank "
        "fusion of both rankings (hybrid)"
    )
    genres: list[str] = Field(description="the top genre and every genre of the track")
    year: int | None = Field(description="album release year, else the track's upload year")
    license: str | None = Field(description="FMA's track.license title")
    duration_s: float | None = Field(description="the track's duration in seconds")
    audio_url: str
    start_s: float | None = Field(
        None,
        description="where the best-matching window starts, seconds into the audio file "
        "(null when the index holds no window embeddings, or in text mode)",
    )
    end_s: float | None = Field(None, description="where that window's audio ends")
    moment_score: float | None = Field(
        None, description="cosine of the query and that window's audio"
    )
    timeline: Timeline | None = Field(
        None, description="every window of the track and its score for the query"
    )


class FeedbackIn(BaseModel):
    """JSON types as the schema says: ``"relevant": 0`` or ``"track_id": "5"`` is refused.

    JSON Schema's integer includes ``5.0``; a string or a boolean is not one.
    """

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, strict=True)
    track_id: int = Field(ge=0, le=MAX_TRACK_ID)
    relevant: bool = Field(strict=True)

    @field_validator("track_id", mode="before")
    @classmethod
    def _json_integer(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("track_id must be a JSON integer")
        return value


class FeedbackOut(BaseModel):
    query: str
    track_id: int
    relevant: bool
    model_version: str | None
    created_at: str
    change: str = Field(
        description="added (201), replaced: this client's earlier verdict on the pair "
        "(200), unchanged: the same verdict again (200)"
    )


def _error(status: int, loc: list[str | int], msg: str, kind: str) -> JSONResponse:
    body = {"detail": [{"loc": loc, "msg": msg, "type": kind}]}
    return JSONResponse(body, status_code=status)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "the body is not readable JSON",
        401: "no or a wrong bearer token (the service has one: CLAP_SERVE_TOKEN)",
        404: "unknown track (not in the served index), its clip is missing, or no window "
        "of it at start_s",
        413: "the uploaded file is larger than CLAP_MAX_UPLOAD_MB",
        415: "the body is not sent as one of the audio types",
        422: "a parameter or the body breaks the schema, or the upload is not usable audio "
        "(empty, truncated, not audio, silent, too short or long, too slow to decode)",
        429: "too many feedback posts from this client: wait Retry-After seconds",
        503: "the database or the feedback writer is busy: try again after Retry-After seconds",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def audio_url(track_id: int) -> str:
    return f"/api/tracks/{track_id}/audio"


SERVER_ONLY = ("audio_path", "file_duration_s")  # Result fields about the server's files
RESULT_FIELDS = [f.name for f in fields(Result) if f.name not in (*SERVER_ONLY, "moment")]


def _moment_fields(moment: Moment | None) -> dict[str, Any]:
    if moment is None:
        return {"start_s": None, "end_s": None, "moment_score": None, "timeline": None}
    return {
        "start_s": moment.start_s,
        "end_s": moment.end_s,
        "moment_score": moment.score,
        "timeline": {"start_s": moment.timeline_start_s, "scores": moment.timeline_scores},
    }


def _results(searcher: Searcher, results: list[Result]) -> JSONResponse:
    body = [
        {k: getattr(r, k) for k in RESULT_FIELDS}
        | {"audio_url": audio_url(r.track_id)}
        | _moment_fields(r.moment)
        for r in results
    ]
    return JSONResponse(body, headers={"X-Model-Version": str(searcher.model_version)})


K = Annotated[int, Query(ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}")]


def filter_params(
    genre: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_GENRE_LENGTH,
            pattern=NOT_BLANK,
            description="the track's top genre or any of its genres (case-insensitive)",
        ),
    ] = None,
    year_min: Annotated[int | None, Query(ge=MIN_YEAR, le=MAX_YEAR)] = None,
    year_max: Annotated[int | None, Query(ge=MIN_YEAR, le=MAX_YEAR)] = None,
    license: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_LICENSE_LENGTH,
            pattern=NOT_BLANK,
            description=f"a licence class ({', '.join(LICENSE_CLASSES)}) or an exact "
            "FMA licence title",
        ),
    ] = None,
    max_duration: Annotated[
        float | None, Query(gt=0, le=MAX_DURATION_S, description="seconds")
    ] = None,
) -> Filters:
    """The filters of ``/api/search`` and ``/api/search/audio`` (``search.filters``)."""
    return Filters(genre, year_min, year_max, license, max_duration)


# An audio query is the request body itself (no multipart: its size is counted as it
# arrives, and nothing names a file on the server).
UPLOAD_TYPES = ("audio/mpeg", "audio/wav", "audio/flac", "audio/ogg", "application/octet-stream")
UPLOAD_BODY = {
    "required": True,
    "description": "the audio file's bytes",
    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_TYPES},
}


async def read_upload(request: Request, target: Path, max_bytes: int) -> Path:
    """The body into ``target``: 415 for another type, 413 past ``max_bytes``, 422 if empty."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise HTTPException(415, f"send the audio file as one of {', '.join(UPLOAD_TYPES)}")
    too_large = f"the file is larger than {max_bytes / 1e6:g} MB"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, too_large)
    size = 0
    with open(target, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, too_large)
            out.write(chunk)
    if size == 0:
        raise AudioQueryError("empty", "the body is empty: send the audio file's bytes")
    return target


TrackId = Annotated[int, PathParam(ge=0, le=MAX_TRACK_ID, description="FMA track id")]
MODEL_VERSION = {"X-Model-Version": {"description": "model version", "schema": {"type": "string"}}}


BEARER = HTTPBearer(auto_error=False, description="CLAP_SERVE_TOKEN")


def authorised(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> None:
    """The service's feedback token (only required when one is set: the schema says so)."""
    token = request.app.state.serve.token
    given = f"Bearer {credentials.credentials}" if credentials else None
    if token is not None and not token_matches(given, token):
        raise HTTPException(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})


def rate_limited_client(request: Request) -> str:
    """The client's key, once it passed its feedback rate limit."""
    client = client_key(request.client.host if request.client else None)
    wait = request.app.state.feedback_limiter.acquire(client)
    if wait is not None:
        retry = str(max(1, round(wait + 0.5)))
        raise HTTPException(429, "too many feedback posts", {"Retry-After": retry})
    return client


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``ErrorBody``: validation, HTTP, bad values, unknown tracks, busy DB."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        items = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type")),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": items}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, [], str(exc.detail), "http_error")
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(ValueError)
    async def _bad_request(_request: Request, exc: ValueError) -> JSONResponse:
        return _error(422, ["query"], str(exc), "value_error")

    @app.exception_handler(AudioQueryError)
    async def _bad_audio(_request: Request, exc: AudioQueryError) -> JSONResponse:
        return _error(422, ["body"], str(exc), f"audio_{exc.reason}")

    @app.exception_handler(MomentNotFoundError)
    async def _no_moment(_request: Request, exc: MomentNotFoundError) -> JSONResponse:
        return _error(404, ["query", "start_s"], str(exc), "not_found")

    @app.exception_handler(TrackNotFoundError)
    async def _unknown_track(_request: Request, exc: TrackNotFoundError) -> JSONResponse:
        msg = f"track {exc.args[0]} is not indexed"
        return _error(404, ["path", "track_id"], msg, "not_found")

    @app.exception_handler(DuckDBLockTimeout)
    @app.exception_handler(FeedbackBusy)
    async def _busy(_request: Request, exc: Exception) -> JSONResponse:
        response = _error(503, [], f"busy, try again: {exc}", "busy")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response


def _search_routes(service: SearchService, serve: ServeSettings) -> APIRouter:
    """Text and audio queries."""
    router = APIRouter()

    @router.get(
        "/api/search",
        response_model=list[SearchResult],
        responses={200: {"headers": MODEL_VERSION}} | _responses(422),
    )
    def search(
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                pattern=NOT_BLANK,
                description="what the music sounds like",
            ),
        ],
        filters: Annotated[Filters, Depends(filter_params)],
        k: K = 10,
        mode: Annotated[Mode, Query(description=MODE_HELP)] = DEFAULT_MODE,
    ) -> Response:
        return _results(*service.search(q, k, filters, mode))

    @router.post(
        "/api/search/audio",
        response_model=list[SearchResult],
        responses={200: {"headers": MODEL_VERSION}} | _responses(413, 415, 422),
        openapi_extra={"requestBody": UPLOAD_BODY},
    )
    async def search_audio(
        request: Request, filters: Annotated[Filters, Depends(filter_params)], k: K = 10
    ) -> Response:
        """Tracks that sound like the uploaded file (the request body: MP3, WAV, FLAC, OGG)."""
        with tempfile.TemporaryDirectory(prefix="clap-upload-") as tmp:
            path = await read_upload(request, Path(tmp) / "upload", serve.max_upload_bytes)
            found = await run_in_threadpool(service.search_audio, path, k, filters)
        return _results(*found)

    return router


def _track_routes(service: SearchService) -> APIRouter:
    """Tracks like an indexed one (or one of its moments), and a track's audio file."""
    router = APIRouter()

    @router.get(
        "/api/tracks/{track_id}/similar",
        response_model=list[SearchResult],
        responses={200: {"headers": MODEL_VERSION}} | _responses(404, 422),
    )
    def similar(
        track_id: TrackId,
        k: K = 10,
        start_s: Annotated[
            float | None,
            Query(
                ge=0,
                le=MAX_DURATION_S,
                description="like the moment of the track at this time (seconds; needs "
                "window embeddings)",
            ),
        ] = None,
    ) -> Response:
        return _results(*service.similar(track_id, k, start_s))

    @router.get(
        "/api/tracks/{track_id}/audio",
        response_class=FileResponse,
        responses={
            200: {"content": {t: {} for t in sorted(set(AUDIO_TYPES.values()))}},
            206: {"description": "the requested byte range (Range header)"},
            416: {"description": "the Range is outside the file"},
        }
        | _responses(404, 422),
    )
    def audio(track_id: TrackId) -> FileResponse:
        try:
            path = service.audio_path(track_id)
        except FileNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        media = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media)

    return router


def _feedback_routes(service: SearchService, serve: ServeSettings) -> APIRouter:
    """Listeners' feedback on a query's results (token and rate limit as configured)."""
    router = APIRouter()

    @router.post(
        "/api/feedback",
        status_code=201,
        dependencies=[Depends(authorised)] if serve.token else [],
        response_model=FeedbackOut,
        responses={200: {"model": FeedbackOut, "description": "this client judged the pair before"}}
        | _responses(*((400, 401) if serve.token else (400,)), 404, 422, 429, 503),
    )
    async def feedback(
        body: FeedbackIn, client: Annotated[str, Depends(rate_limited_client)]
    ) -> JSONResponse:
        # Waits on the event loop, not in a worker thread, until the writer committed the row.
        pending = service.submit_feedback(body.query, body.track_id, body.relevant, client)
        recorded = await asyncio.wrap_future(pending)
        row = recorded.row
        out = {k: v for k, v in asdict(row).items() if k != "client"}
        out |= {"created_at": row.created_at.isoformat(), "change": recorded.change}
        return JSONResponse(out, status_code=201 if recorded.change == "added" else 200)

    return router


def _with_examples(app: FastAPI, service: SearchService) -> None:
    """The OpenAPI schema, with an indexed track id as the example wherever a track id goes."""
    default_openapi = app.openapi

    def openapi_with_examples() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            example = int(service.searcher.index.catalog.track_ids[0])
            for path in schema["paths"].values():
                for operation in path.values():
                    for param in operation.get("parameters", []):
                        if param["name"] == "track_id":
                            param["schema"]["examples"] = [example]
            body = schema["components"]["schemas"]["FeedbackIn"]["properties"]
            body["track_id"]["examples"] = [example]
            body["query"]["examples"] = ["warm lo-fi guitar"]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_examples  # type: ignore[method-assign]


def create_app(service: SearchService, serve: ServeSettings | None = None) -> FastAPI:
    """The app over a loaded service; the lifespan runs the service's index watcher."""
    serve = serve or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_watcher()
        try:
            yield
        finally:
            service.close()  # queued feedback is written before the process exits

    app = FastAPI(title="clap-pipeline search", lifespan=lifespan)
    app.state.serve = serve
    app.state.feedback_limiter = RateLimiter(serve.feedback_per_minute)
    page = PAGE.read_text(encoding="utf-8")
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/health")
    def health() -> dict[str, object]:
        return service.health()

    app.include_router(_search_routes(service, serve))
    app.include_router(_track_routes(service))
    app.include_router(_feedback_routes(service, serve))
    _with_examples(app, service)
    return app


def serve(service: SearchService, host: str, port: int, settings: ServeSettings) -> None:
    """Run the app with uvicorn until interrupted (refused beyond loopback without a token)."""
    import uvicorn

    check_listen(host, settings.token)
    app = create_app(service, settings)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
