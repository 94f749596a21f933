"""HTTP layer of the search service (FastAPI): routes, status codes and the web page.

The work is in ``clap_pipeline.search.service``; this module maps it onto HTTP:

- ``GET /api/health``: model version, number of indexed tracks, index kind;
- ``GET /api/search?q=TEXT&k=N[&genre=&year_min=&year_max=&license=&max_duration=]``:
  ranked results among the tracks that pass the filters (``search.filters``);
- ``GET /api/tracks/{id}/similar?k=N``: audio->audio neighbours;
- ``GET /api/tracks/{id}/audio``: the clip, with Range requests (206) for seeking;
- ``POST /api/feedback``: ``{query, track_id, relevant}`` into DuckDB ``search_feedback``;
- ``GET /``: the page (``static/index.html``), which renders metadata as text only.

Contract: every constraint is in the OpenAPI schema (``/openapi.json``), every status
code is documented with its body, and every error has one shape, ``ErrorBody``
(``{"detail": [{"loc", "msg", "type"}]}``, FastAPI's 422 included). A Schemathesis run
against the real server checks it (clap_pipeline_tests/search/test_contract.py).

Run it with ``clap-pipeline serve`` (uvicorn, 127.0.0.1:8000 by default).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from clap_pipeline.dataset import MAX_TRACK_ID
from clap_pipeline.feedback import MAX_QUERY_CHARS
from clap_pipeline.search.engine import MAX_K, Result, Searcher
from clap_pipeline.search.filters import (
    LICENSE_CLASSES,
    MAX_GENRE_LENGTH,
    MAX_LICENSE_LENGTH,
    MAX_YEAR,
    MIN_YEAR,
    Filters,
    TrackNotFoundError,
)
from clap_pipeline.search.service import SearchService
from clap_pipeline.storage import DuckDBLockTimeout

PAGE = Path(__file__).with_name("static") / "index.html"
AUDIO_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
}
NOT_BLANK = r"\S"  # at least one non-whitespace character (the service strips the text)
MAX_DURATION_S = 1_000_000.0


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: e.g. [query, q] or [path, track_id]")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API has this shape (FastAPI's validation errors too)."""

    detail: list[ErrorItem]


class SearchResult(BaseModel):
    rank: int
    track_id: int
    title: str | None
    artist: str | None
    genre: str | None = Field(description="FMA's top-level genre (track.genre_top)")
    score: float = Field(description="cosine similarity of the query and the track's audio")
    genres: list[str] = Field(description="the top genre and every genre of the track")
    year: int | None = Field(description="album release year, else the track's upload year")
    license: str | None = Field(description="FMA's track.license title")
    duration_s: float | None = Field(description="the track's duration in seconds")
    audio_url: str


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


def _error(status: int, loc: list[str | int], msg: str, kind: str) -> JSONResponse:
    body = {"detail": [{"loc": loc, "msg": msg, "type": kind}]}
    return JSONResponse(body, status_code=status)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "the body is not readable JSON",
        404: "unknown track (not in the served index) or its clip is missing",
        422: "a parameter or the body breaks the schema",
        503: "the database is busy: try again",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def audio_url(track_id: int) -> str:
    return f"/api/tracks/{track_id}/audio"


SERVER_ONLY = ("audio_path", "file_duration_s")  # Result fields about the server's files


def _results(searcher: Searcher, results: list[Result]) -> JSONResponse:
    body = [
        {k: v for k, v in asdict(r).items() if k not in SERVER_ONLY}
        | {"audio_url": audio_url(r.track_id)}
        for r in results
    ]
    return JSONResponse(body, headers={"X-Model-Version": str(searcher.model_version)})


K = Annotated[int, Query(ge=1, le=MAX_K, description=f"number of results, 1..{MAX_K}")]
TrackId = Annotated[int, PathParam(ge=0, le=MAX_TRACK_ID, description="FMA track id")]
MODEL_VERSION = {"X-Model-Version": {"description": "model version", "schema": {"type": "string"}}}


def create_app(service: SearchService) -> FastAPI:
    """The app over a loaded service; the lifespan runs the service's index watcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_watcher()
        try:
            yield
        finally:
            service.stop_watcher()

    app = FastAPI(title="clap-pipeline search", lifespan=lifespan)
    page = PAGE.read_text(encoding="utf-8")

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

    @app.exception_handler(TrackNotFoundError)
    async def _unknown_track(_request: Request, exc: TrackNotFoundError) -> JSONResponse:
        msg = f"track {exc.args[0]} is not indexed"
        return _error(404, ["path", "track_id"], msg, "not_found")

    @app.exception_handler(DuckDBLockTimeout)
    async def _busy(_request: Request, exc: DuckDBLockTimeout) -> JSONResponse:
        return _error(503, [], f"database busy, try again: {exc}", "busy")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/health")
    def health() -> dict[str, object]:
        return service.health()

    @app.get(
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
        k: K = 10,
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
    ) -> Response:
        filters = Filters(genre, year_min, year_max, license, max_duration)
        return _results(*service.search(q, k, filters))

    @app.get(
        "/api/tracks/{track_id}/similar",
        response_model=list[SearchResult],
        responses={200: {"headers": MODEL_VERSION}} | _responses(404, 422),
    )
    def similar(track_id: TrackId, k: K = 10) -> Response:
        return _results(*service.similar(track_id, k))

    @app.get(
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

    @app.post(
        "/api/feedback",
        status_code=201,
        response_model=FeedbackOut,
        responses=_responses(400, 404, 422, 503),
    )
    def feedback(body: FeedbackIn) -> dict[str, object]:
        row = service.feedback(body.query, body.track_id, body.relevant)
        return asdict(row) | {"created_at": row.created_at.isoformat()}

    default_openapi = app.openapi

    def openapi_with_examples() -> dict[str, Any]:
        """The schema, with an indexed track id as the example wherever a track id goes."""
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
    return app


def serve(service: SearchService, host: str, port: int) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, access_log=False, log_level="info")
