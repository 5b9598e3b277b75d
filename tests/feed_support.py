"""Helpers for the event-feed tests: appending as the API and workers do, the expected log, feed clients."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import asyncpg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from domain.clip import Register
from domain.events import ExtractionRequested, ExtractionStarted
from eventlog import cursor, store
from usecases import clips
from usecases.clips import claim_project
from usecases.services import utcnow
from runtime.settings import Settings

if TYPE_CHECKING:
    from tests.inprocess import InProcessServer

SETTINGS = Settings()


def context():  # noqa: ANN201 - domain.clip.Context
    return SETTINGS.context(utcnow(), 0.5)


async def register(pool: asyncpg.Pool, project: str, user: str, *, clip: str | None = None, hold: float = 0.0) -> int:
    """Register a clip as `POST .../clips` does (claiming the project in the same transaction); `hold` seconds pass
    between the append and COMMIT, so that commits land out of position order. Returns the event's position."""

    async def claim_then_hold(conn: asyncpg.Connection, _state: object) -> None:
        await claim_project(conn, project, user)
        if hold:
            await asyncio.sleep(hold)

    handled = await clips.handle(
        pool,
        project,
        clip or f"c{secrets.token_hex(4)}",
        Register(source="a.mp4", start=0.0, end=1.0),
        context,
        after_append=claim_then_hold,
    )
    return handled.position


async def burst(pool: asyncpg.Pool, project: str, user: str, count: int, source: str = "a.mp4") -> list[int]:
    """`count` events in one transaction (one new stream), then NOTIFY: positions a reader gets in one batch (a
    long `source` makes every other event as big)."""
    now = utcnow()
    events: list[tuple[Any, str]] = []
    for attempt in range(1, count + 1):
        if attempt % 2:
            events.append((ExtractionRequested(run=1, attempt=attempt, reason="registered", not_before=now,
                                               source=source, start=0.0, end=1.0), "pending"))
        else:
            events.append((ExtractionStarted(run=1, attempt=attempt, worker_id="w",
                                             deadline_at=now + timedelta(minutes=10)), "running"))
    async with pool.acquire() as conn:
        async with conn.transaction():
            stored = await store.append(conn, project_id=project, clip_id=f"b{secrets.token_hex(4)}",
                                        expected_version=0, events=events, recorded_at=now)
            await claim_project(conn, project, user)
        await store.notify(conn, stored[-1].position)
    return [e.position for e in stored]


async def expected_positions(pool: asyncpg.Pool, user: str, after: int = 0, project: str | None = None) -> list[int]:
    """The log as `user` may see it (their projects, or one of them), after `after`, in position order."""
    rows = await pool.fetch(
        "SELECT e.position FROM events e JOIN projects p ON p.project_id = e.project_id "
        "WHERE p.owner = $1 AND e.position > $2 AND ($3::text IS NULL OR e.project_id = $3) ORDER BY e.position",
        user,
        after,
        project,
    )
    return [r["position"] for r in rows]


async def cursor_at(pool: asyncpg.Pool, position: int) -> str:
    """The cursor the feed gives for the event at `position`."""
    row = await pool.fetchrow("SELECT stream, version, recorded_at FROM events WHERE position = $1", position)
    print_ = cursor.fingerprint(row["stream"], row["version"], row["recorded_at"])
    return cursor.encode(await store.epoch(pool), position, print_)


def ws_url(base: str, token: str | None = None, **params: str | None) -> str:
    query = {k: v for k, v in params.items() if v is not None}
    if token is not None:
        query["token"] = token
    return f"{base}/api/events/ws?{urlencode(query)}"


async def open_socket(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(url, compression=None, proxy=None, open_timeout=10, **kwargs)


async def close_code(url: str, **kwargs: Any) -> tuple[list[dict], int, str]:
    """Connect, read until the server closes: (messages, close code, reason)."""
    messages: list[dict] = []
    async with await open_socket(url, **kwargs) as ws:
        try:
            async with asyncio.timeout(10):
                while True:
                    messages.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, closed
            return messages, closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("unreachable")


async def receive_events(ws: ClientConnection, until: int, timeout: float = 10) -> list[dict]:
    """Events from `ws` (pings skipped) until one at position `until` or beyond has arrived."""
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        while not events or events[-1]["position"] < until:
            message = json.loads(await ws.recv())
            if message["type"] == "event":
                events.append(message["event"])
    return events


async def until_caught_up(ws: ClientConnection, timeout: float = 10) -> list[dict]:
    """Read `ws` until its `caught_up` message (sent once, after the backlog): from then on the socket's subscription
    is live, so anything committed afterwards reaches it. Returns the events of the backlog (pings skipped)."""
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        while (message := json.loads(await ws.recv()))["type"] != "caught_up":
            if message["type"] == "event":
                events.append(message["event"])
    return events


async def parked_long_polls(server: InProcessServer, user: str) -> int:
    """How many of `user`'s long polls (`GET /api/events?wait=...`) the in-process server holds parked on its broker:
    subscribed, their first read done and empty, waiting for a wake-up. Read in the server's own event loop (the
    broker's state is not thread-safe); `Subscription._waiter` is the future `Subscription.wait` awaits."""

    async def count() -> int:
        subs = server.state.feed._by_user.get(user, ())  # noqa: SLF001 - no public view of the long polls
        waiters = [sub._waiter for sub in subs if not sub.live]  # noqa: SLF001
        return sum(1 for waiter in waiters if waiter is not None and not waiter.done())

    return await server.acall(count)


async def until_parked(server: InProcessServer, user: str, count: int = 1, timeout: float = 10) -> None:
    """Until the server holds `count` of `user`'s long polls parked (`parked_long_polls`): an event committed from
    now on can reach such a poll only through the broker's wake-up, not through the poll's first read."""
    async with asyncio.timeout(timeout):
        while await parked_long_polls(server, user) < count:
            await asyncio.sleep(0.01)
