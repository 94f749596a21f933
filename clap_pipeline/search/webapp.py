"""HTTP layer of the search service (FastAPI): routes, status codes and the web page.

The work is in ``clap_pipeline.search.service``; this module maps it onto HTTP:

- ``GET /api/health``: model version, number of indexed tracks, index kind;
- ``GET /api/search?q=TEXT&k=N``: ranked results (4xx for an empty or too long ``q``,
  or ``k`` outside 1..100);
- ``GET /api/tracks/{id}/similar?k=N``: audio->audio neighbours;
- ``GET /api/tracks/{id}/audio``: the clip, with Range requests (206) for seeking;
- ``POST /api/feedback``: ``{query, track_id, relevant}`` into DuckDB ``search_feedback``;
- ``GET /``: the page (``static/index.html``), which renders metadata as text only.

Run it with ``clap-pipeline serve`` (uvicorn, 127.0.0.1:8000 by default).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel

from clap_pipeline.search.service import MAX_K, Result, SearchService, Snapshot, TrackNotFoundError
from clap_pipeline.storage import DuckDBLockTimeout

PAGE = Path(__file__).with_name("static") / "index.html"
AUDIO_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
}


class FeedbackIn(BaseModel):
    query: str
    track_id: int
    relevant: bool


def audio_url(track_id: int) -> str:
    return f"/api/tracks/{track_id}/audio"


def _results(snap: Snapshot, results: list[Result]) -> JSONResponse:
    body = [asdict(r) | {"audio_url": audio_url(r.track_id)} for r in results]
    return JSONResponse(body, headers={"X-Model-Version": str(snap.model_version)})


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

    @app.exception_handler(ValueError)
    async def _bad_request(_request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TrackNotFoundError)
    async def _unknown_track(_request, exc: TrackNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": f"track {exc.args[0]} is not indexed"}, status_code=404)

    @app.exception_handler(DuckDBLockTimeout)
    async def _busy(_request, exc: DuckDBLockTimeout) -> JSONResponse:
        return JSONResponse({"detail": f"database busy, try again: {exc}"}, status_code=503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/health")
    def health() -> dict[str, object]:
        return service.health()

    @app.get("/api/search")
    def search(q: str = Query(..., description="what the music sounds like"), k: int = 10):
        return _results(*service.search(q, k))

    @app.get("/api/tracks/{track_id}/similar")
    def similar(track_id: int, k: int = Query(10, description=f"1..{MAX_K}")):
        return _results(*service.similar(track_id, k))

    @app.get("/api/tracks/{track_id}/audio")
    def audio(track_id: int) -> FileResponse:
        try:
            path = service.audio_path(track_id)
        except FileNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        media = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media)

    @app.post("/api/feedback", status_code=201)
    def feedback(body: FeedbackIn) -> dict[str, object]:
        row = service.feedback(body.query, body.track_id, body.relevant)
        return asdict(row) | {"created_at": row.created_at.isoformat()}

    return app


def serve(service: SearchService, host: str, port: int) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, access_log=False, log_level="info")
