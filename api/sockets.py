"""The feed's open WebSockets by token, in one API process: a limit per token, and revocation of open sockets.

- At most `CLIPLOG_WS_PER_TOKEN` (default 20) open sockets per token and API process; one more is closed with
  4429 (the limit is per process: behind a load balancer of N instances a token may hold up to N times as many).
- A revoked token's sockets are closed with 4401 within `CLIPLOG_TOKEN_CHECK_INTERVAL` seconds (default 1): the
  process checks the tokens of its open sockets with one indexed query per interval (none when no socket is
  open). HTTP requests check the token on every request, so there revocation is immediate.
- A browser's `Origin` must be the API's own (same host) or one of `CLIPLOG_CORS_ORIGINS`; a request without
  `Origin` is not from a browser and is allowed (close code 4403 otherwise).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg

from eventlog.broker import UNAVAILABLE, Subscription

log = logging.getLogger("cliplog.feed")


class OpenSockets:
    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._by_token: dict[str, set[Subscription]] = {}
        self._revoked: set[Subscription] = set()

    def add(self, token_hash: str, sub: Subscription) -> bool:
        """Count `sub` against its token; False (and not counted) if the token has its limit open already."""
        subs = self._by_token.setdefault(token_hash, set())
        if len(subs) >= self.per_token:
            return False
        subs.add(sub)
        return True

    def remove(self, token_hash: str, sub: Subscription) -> bool:
        """Forget `sub`; True if it was closed because its token was revoked."""
        subs = self._by_token.get(token_hash)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_token[token_hash]
        revoked = sub in self._revoked
        self._revoked.discard(sub)
        return revoked

    def count(self, token_hash: str) -> int:
        return len(self._by_token.get(token_hash, ()))

    async def check(self, db: asyncpg.Pool | asyncpg.Connection) -> int:
        """Close the subscriptions of tokens that no longer exist; how many were closed."""
        if not self._by_token:
            return 0
        hashes = list(self._by_token)
        rows = await db.fetch("SELECT token_hash FROM api_tokens WHERE token_hash = ANY($1::text[])", hashes)
        alive = {r["token_hash"] for r in rows}
        closed = 0
        for token_hash in hashes:
            if token_hash in alive:
                continue
            for sub in self._by_token.get(token_hash, ()):
                if sub not in self._revoked:
                    self._revoked.add(sub)
                    sub.close()  # its socket's handler wakes, stops streaming and closes with 4401
                    closed += 1
        return closed

    async def run(self, db: asyncpg.Pool, interval: float) -> None:
        """`check` every `interval` seconds until cancelled; a database outage only delays it."""
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check(db)
                failing = False
            except (*UNAVAILABLE, asyncpg.PostgresError) as error:
                if not failing:
                    log.warning("cannot check the tokens of open sockets (%s: %s)", type(error).__name__, error)
                failing = True


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """A WebSocket handshake's `Origin`: absent (not a browser), the API's own host, or a configured origin."""
    if origin is None:
        return True
    if "*" in allowed or origin.lower().rstrip("/") in allowed:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
