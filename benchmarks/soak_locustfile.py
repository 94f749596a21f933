"""Locust users for benchmarks/soak.py: what a music app's clients send the search service.

Read from the environment (set by soak.py): ``SOAK_PLAN`` (JSON: track ids, genres, an
audio clip to upload, artist names) and ``SOAK_ACCEPTED`` (where the feedback rows the
service accepted are written at the end). Every request must succeed: a non-2xx answer
is a failure in Locust's statistics.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, events, task

PLAN = json.loads(Path(os.environ["SOAK_PLAN"]).read_text())
CLIP = Path(PLAN["upload"]).read_bytes()
TIMEOUT_S = 30
DESCRIPTIONS = ["warm guitar", "slow piano", "upbeat electronic beat", "dark ambient", "folk"]
ACCEPTED: list[dict] = []
_users = itertools.count()


class Listener(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.user = next(_users)
        self.posts = itertools.count()
        self.rng = random.Random(self.user)

    def _get(self, path: str, name: str, **params) -> None:
        self.client.get(path, params=params, name=name, timeout=TIMEOUT_S)

    @task(6)
    def search(self) -> None:
        mode = self.rng.choice(["hybrid", "hybrid", "audio", "text"])
        query = self.rng.choice([*DESCRIPTIONS, *PLAN["artists"]])
        self._get("/api/search", f"/api/search {mode}", q=query, k=10, mode=mode)

    @task(2)
    def search_filtered(self) -> None:
        genre = self.rng.choice(PLAN["genres"])
        query = f"{self.rng.choice(DESCRIPTIONS)} {genre.lower()}"
        self._get("/api/search", "/api/search filtered", q=query, k=10, genre=genre)

    @task(2)
    def similar(self) -> None:
        track = self.rng.choice(PLAN["track_ids"])
        self._get(f"/api/tracks/{track}/similar", "/api/tracks/{id}/similar", k=10)

    @task(1)
    def audio_query(self) -> None:
        self.client.post(
            "/api/search/audio",
            params={"k": 10},
            data=CLIP,
            headers={"Content-Type": "audio/mpeg"},
            name="/api/search/audio",
            timeout=TIMEOUT_S,
        )

    @task(2)
    def stream(self) -> None:
        track = self.rng.choice(PLAN["track_ids"])
        start = self.rng.randrange(0, 20_000)
        self.client.get(
            f"/api/tracks/{track}/audio",
            headers={"Range": f"bytes={start}-{start + 65_535}"},
            name="/api/tracks/{id}/audio (Range)",
            timeout=TIMEOUT_S,
        )

    @task(2)
    def feedback(self) -> None:
        body = {
            "query": f"soak user {self.user} post {next(self.posts)}",
            "track_id": self.rng.choice(PLAN["track_ids"]),
            "relevant": self.rng.random() < 0.7,
        }
        response = self.client.post(
            "/api/feedback", json=body, name="/api/feedback", timeout=TIMEOUT_S
        )
        if response.status_code in (200, 201):
            ACCEPTED.append(body)


@events.quitting.add_listener
def _write_accepted(environment, **_kwargs) -> None:
    Path(os.environ["SOAK_ACCEPTED"]).write_text(json.dumps(ACCEPTED))
