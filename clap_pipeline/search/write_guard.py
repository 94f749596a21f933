"""Who may write feedback to the service, and how often: feedback feeds the next model.

- **Token.** With ``CLAP_SERVE_TOKEN`` set, ``POST /api/feedback`` needs
  ``Authorization: Bearer <token>`` (compared in constant time). A service that listens
  beyond loopback without one refuses to start (``check_listen``): anyone who can reach
  it could otherwise push the next model.
- **Rate.** Each client (its address) may post ``feedback_per_minute`` verdicts a minute
  (a token bucket that refills continuously); more get 429 with ``Retry-After``.
- **Client.** Rows carry a hash of the client's address (``client_key``), never the
  address itself: feedback.py deduplicates per (client, query, track) and bounds what one
  client can weigh in training.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time

from clap_pipeline.config import ConfigError

LOOPBACK_NAMES = ("localhost",)
MAX_TRACKED_CLIENTS = 100_000  # the buckets of the clients least recently seen go first


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` is reachable from this machine only."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve to any interface


def check_listen(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a feedback token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} listens beyond loopback: set CLAP_SERVE_TOKEN (>= 16 characters) "
            "so that only holders of the token can post feedback (it trains the next model), "
            "or bind 127.0.0.1"
        )


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` with this token (constant-time comparison)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def client_key(address: str | None) -> str:
    """A stable pseudonym of a client address (16 hex characters of its SHA-256)."""
    return hashlib.sha256(f"clap-feedback\x00{address or ''}".encode()).hexdigest()[:16]


class RateLimiter:
    """A token bucket per client: ``per_minute`` posts a minute, bursts up to ``per_minute``."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time)
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float | None:
        """None when ``client`` may post now (one token taken), else seconds to wait."""
        with self._lock:
            now = self._clock()
            tokens, since = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - since) * self.rate)
            wait = None if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if wait is None else tokens, now)
            if len(self._buckets) > MAX_TRACKED_CLIENTS:  # oldest first (insertion order)
                self._buckets.pop(next(iter(self._buckets)))
            return wait
