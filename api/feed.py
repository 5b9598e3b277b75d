"""The event feed: `GET /api/events` (cursor pages, long poll) and `GET /api/events/ws` (WebSocket push).

Both read the caller's projects only, from an opaque cursor (`eventlog.cursor`: the log's epoch, a position and
a fingerprint of the event there). The WebSocket sends the backlog after the cursor from the database, then the
live events the process's `FeedBroker` (eventlog/broker.py) hands it; see that module for why the switch has no gap
and no duplicate. No pooled connection is held for the life of a socket or a long poll: every read acquires one
and gives it back (as Litestar's `stream_di_hog_fix` example does), and waiting happens on the broker.

Events go out as JSON built once: `data` is the JSON text PostgreSQL holds (never decoded and re-encoded), a live
event's message is rendered once for all subscribers, and pages below the broker's head (where every transaction
has finished) are read without the safe-horizon check.

WebSocket close codes (API.md, plus the additions documented in docs/feed.md):
4400 bad `after`/`project_id`, 4401 bad or revoked token, 4403 a browser origin not allowed (`api.sockets`),
4404 project not visible, 4429 too many open sockets for this token (`api.sockets`), 4408 too slow (the subscriber's buffer
overflowed, or a send did not complete within `CLIPLOG_WS_SEND_TIMEOUT`: reconnect from the last cursor), 4410 cursor from another log (after a `reset` message), 4503
PostgreSQL unavailable (reconnect later), 1012 server restarting.

Every send is bounded: the handler marks `sub.sending_since` around each batch and the broker's one timer cancels
a send stuck for `CLIPLOG_WS_SEND_TIMEOUT` (`Subscription.on_stall`); the socket is then closed with 4408, the
close itself bounded by the same timeout. Dead peers are found by uvicorn's protocol pings (`api/server.py`).

Tunables: `CLIPLOG_WS_PING_INTERVAL`, `CLIPLOG_WS_SEND_TIMEOUT`, `CLIPLOG_FEED_BUFFER`, `CLIPLOG_FEED_POLL_INTERVAL`
(`runtime.settings`; documented in docs/feed.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, AsyncIterator, Literal
from uuid import UUID

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, WebSocket, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect
from litestar.params import QueryParameter
from litestar.response import Stream
from litestar.types import Receive, Scope, Send

from api.auth import Unauthorized, bearer, check_id, hash_token, require_project, user_for_token
from api.deps import ServicesDep, UserDep
from api.openapi import ID_REGEX, errors, get_or_head
from api.server import SCOPE_PROTOCOL, SCOPE_SEND
from api.sockets import OpenSockets, origin_allowed
from api.views import EventPage
from domain.errors import CursorFromAnotherLog, InvalidInput, NotFound, Unavailable
from eventlog import cursor
from eventlog.broker import UNAVAILABLE, EventMessage, FeedBroker, Subscription, render
from eventlog.pages import JsonEvents, head, locate, read_page, read_page_json
from usecases.services import Services

log = logging.getLogger("cliplog.feed")

MAX_LIMIT = 1000
MAX_WAIT = 30.0
BACKLOG_PAGE = 500

CLOSE_BAD_INPUT = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4408
CLOSE_RESET = 4410
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 4503


# Wire format (an event's message is `eventlog.broker.render`'s) -------------------------------------------------


class ResetMessage(msgspec.Struct, tag="reset", tag_field="type"):
    detail: str


class CaughtUpMessage(msgspec.Struct, tag="caught_up", tag_field="type"):
    """Sent once, after the backlog: `cursor` is that of the last event sent (or the cursor the client gave)."""

    cursor: str


class PingMessage(msgspec.Struct, tag="ping", tag_field="type"):
    pass


# What the socket sends, for the AsyncAPI document (api.openapi.asyncapi): name -> (struct, summary).
MESSAGES: dict[str, tuple[type, str]] = {
    "event": (EventMessage, "an event after the cursor: the backlog first, then live, each exactly once"),
    "ping": (PingMessage, "after CLIPLOG_WS_PING_INTERVAL seconds (15) of silence"),
    "reset": (ResetMessage, "the cursor belongs to another log (reset or restored database); close 4410 follows"),
    "caught_up": (CaughtUpMessage, "once, after the backlog: the cursor of the last event sent (or the one given)"),
}
QUERY = {
    "after": "a cursor, or `latest`; none: the beginning of the log",
    "project_id": "only this project ([A-Za-z0-9_-]{1,64})",
    "token": "the API token, if the client cannot send `Authorization: Bearer`",
}

_encode = msgspec.json.Encoder().encode
PING_MESSAGE = {"type": "websocket.send", "text": _encode(PingMessage()).decode()}


# Wiring (app lifespan, metrics) ---------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Start this process's broker (after `app.state.services` exists) and stop it before the services close."""
    services: Services = app.state.services
    settings = services.settings
    broker = FeedBroker(
        services.pool,
        services.connect_listener,
        render,
        buffer=settings.feed_buffer,
        poll_interval=settings.feed_poll_interval,
        idle_after=settings.ws_ping_interval,
        send_timeout=settings.ws_send_timeout,
    )
    app.state.feed = broker
    app.state.sockets = sockets = OpenSockets(services.settings.ws_per_token)
    await broker.start()
    checker = asyncio.create_task(sockets.run(services.pool, services.settings.token_check_interval))
    try:
        yield
    finally:
        checker.cancel()
        await asyncio.gather(checker, return_exceptions=True)
        await broker.stop()


def subscriber_count(state: State) -> int:
    """WebSocket feed subscribers on this process (for `/metrics`)."""
    broker: FeedBroker | None = state.get("feed")
    return broker.subscribers if broker is not None else 0


# Cursors ---------------------------------------------------------------------------------------------------------


def parse_after(after: str | None) -> cursor.Cursor | Literal["latest"] | None:
    """None (the beginning), "latest" (the head), or the decoded cursor; InvalidInput (400) when malformed."""
    if not after:
        return None
    if after == "latest":
        return "latest"
    return cursor.decode(after)


async def resolve_after(
    services: Services, broker: FeedBroker, after: cursor.Cursor | Literal["latest"] | None
) -> tuple[UUID, int, str, int | None]:
    """`(epoch, position, cursor, final)`: where to read after (position 0 at the beginning, the safe head for
    `latest`, else the cursor's position if it belongs to this log as it is now: CursorFromAnotherLog, 410,
    otherwise), and a position up to which the log is final (None if unknown)."""
    located = await locate(services.pool, after if isinstance(after, cursor.Cursor) else None, broker.known)
    if isinstance(after, cursor.Cursor):
        given = cursor.encode(located.epoch, located.position, after.fingerprint)
        return located.epoch, located.position, given, located.final
    position, print_ = await head(services.pool) if after == "latest" else (0, 0)
    return located.epoch, position, cursor.encode(located.epoch, position, print_), located.final


async def _project_filter(services: Services, project_id: str | None, user: str) -> str | None:
    if project_id is None:
        return None
    check_id(project_id, "project_id")
    await require_project(services.pool, project_id, user)
    return project_id


async def _read(
    services: Services,
    epoch: UUID,
    position: int,
    limit: int,
    user: str,
    project: str | None,
    final: int | None,
    separator: bytes,
) -> JsonEvents:
    """Up to `limit` events after `position`, as JSON joined by `separator`: below `final` without the safe-horizon
    check, beyond it with."""
    read = functools.partial(read_page_json, services.pool, epoch, user=user, project_id=project, separator=separator)
    if final is None or position >= final:
        return await read(position, limit)
    events = await read(position, limit, upto=final)
    if events.count < limit:
        events += await read(final, limit - events.count)
    return events


# GET /api/events ------------------------------------------------------------------------------------------------

NDJSON = "application/x-ndjson"
STREAM_READ = 5000  # events per read of the NDJSON stream
# The NDJSON answer's headers: the log's epoch; the cursor of the log's head when the request came (the stream
# reads every event up to it, and may go a little past it); the user the token belongs to (who owns every project
# in the stream).
EPOCH_HEADER = "Cliplog-Epoch"
HEAD_HEADER = "Cliplog-Head"
USER_HEADER = "Cliplog-User"


PAGE_SEPARATOR = b","


def page_json(events: JsonEvents, given: str) -> bytes:
    """The page (`EventPage`, exactly as msgspec would write it) around events that are JSON text joined by
    PAGE_SEPARATOR already."""
    assert events.separator == PAGE_SEPARATOR or not events.count
    next_cursor = events.last_cursor if events.last_cursor is not None else given
    # (a join: `b"...%s..." % body` took 0.4 ms for a 420 KB page, 20 times as long)
    return b"".join((b'{"events":[', events.body, b'],"next_cursor":"', next_cursor.encode(), b'"}'))


@get_or_head(
    "/api/events",
    summary="Events of the caller's projects after a cursor (long poll with `wait`; NDJSON stream on request)",
    description="With `Accept: application/x-ndjson` the answer is every event after the cursor up to the log's "
    "head when the request came, one event per line (each as in a page), and `limit` and `wait` are not used; "
    "its headers `Cliplog-Epoch`, `Cliplog-Head` (the head's cursor) and `Cliplog-User` say what it read.",
    tags=["feed"],
    responses=errors(400, 401, 404, 410),
)
async def list_events(
    request: Request,
    user: UserDep,
    services: ServicesDep,
    state: State,
    after: Annotated[str | None, QueryParameter(description="a cursor, or `latest`; none: the beginning")] = None,
    project_id: Annotated[
        str | None, QueryParameter(description="only this project", pattern=ID_REGEX, min_length=1, max_length=64)
    ] = None,
    limit: Annotated[int, QueryParameter(description="events per page at most", ge=1, le=MAX_LIMIT)] = 100,
    wait: Annotated[
        float, QueryParameter(description="seconds to hold an empty answer (long poll)", ge=0, le=MAX_WAIT)
    ] = 0.0,
) -> Response[EventPage]:
    try:
        if NDJSON in request.headers.get("accept", ""):
            return await _stream_events(services, state.feed, user, parse_after(after), project_id)
        events, given = await _page(services, state.feed, user, parse_after(after), project_id, limit, wait)
    except UNAVAILABLE as error:  # including asyncpg's client-side errors on a connection cut mid-query
        log.warning("GET /api/events: PostgreSQL unavailable: %s: %s", type(error).__name__, error)
        raise Unavailable("PostgreSQL is unavailable; try again shortly") from None
    return Response(page_json(events, given), media_type="application/json")


async def _page(
    services: Services,
    broker: FeedBroker,
    user: str,
    start: cursor.Cursor | Literal["latest"] | None,
    project_id: str | None,
    limit: int,
    wait: float,
) -> tuple[JsonEvents, str]:
    """The page's events, and the cursor it was read after."""
    project = await _project_filter(services, project_id, user)
    epoch, position, given, final = await resolve_after(services, broker, start)
    if wait <= 0:
        events = await _read(services, epoch, position, limit, user, project, final, PAGE_SEPARATOR)
    else:
        sub = broker.subscribe(user, project, live=False)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while True:
                sub.take()  # forget earlier wake-ups: this read sees those events
                events = await _read(services, epoch, position, limit, user, project, final, PAGE_SEPARATOR)
                if events.count:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0 or sub.closed:
                    break
                await sub.wait(remaining)  # returns at once if an event arrived during the read
                if sub.reset:
                    raise CursorFromAnotherLog(sub.reset)
        finally:
            broker.unsubscribe(sub)
    return events, given


async def _stream_events(
    services: Services,
    broker: FeedBroker,
    user: str,
    start: cursor.Cursor | Literal["latest"] | None,
    project_id: str | None,
) -> Stream:
    """The NDJSON stream: reads of `STREAM_READ` events up to the head as of now, the next one under way while this
    one is sent. The first is read before the answer starts (so a bad cursor or an unavailable database is a JSON
    error); each read takes a pooled connection and gives it back. A stream cut short (the database went away) ends
    early: continue from its last event's cursor."""
    project = await _project_filter(services, project_id, user)
    epoch, position, _, final = await resolve_after(services, broker, start)
    upto, upto_print = await head(services.pool)
    first = await _read(services, epoch, position, STREAM_READ, user, project, final, b"\n")
    # What a client needs to describe what it read (`cliplog export --url`'s header): additions, docs/feed.md.
    headers = {
        EPOCH_HEADER: str(epoch),
        HEAD_HEADER: cursor.encode(epoch, upto, upto_print),
        USER_HEADER: user,
    }

    def read_after(page: JsonEvents) -> asyncio.Task[JsonEvents] | None:
        if page.count < STREAM_READ or page.last_position is None or page.last_position >= upto:
            return None
        return asyncio.ensure_future(
            _read(services, epoch, page.last_position, STREAM_READ, user, project, final, b"\n")
        )

    async def lines() -> AsyncIterator[bytes]:
        page, following = first, read_after(first)
        try:
            while page.count:
                yield page.body  # and the last line's end apart: `body + b"\n"` copied 2 MB per read (1 ms here)
                yield b"\n"
                if following is None:
                    return
                try:
                    page = await following
                except UNAVAILABLE as error:
                    log.warning("GET /api/events (NDJSON): PostgreSQL unavailable: %s: %s", type(error).__name__, error)
                    return
                following = read_after(page)
        finally:  # the client went away: stop the read under way
            if following is not None and not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)

    return Stream(lines(), media_type=NDJSON, headers=headers)


# GET /api/events/ws ---------------------------------------------------------------------------------------------


class FeedSocket(WebSocket):
    """Litestar's WebSocket, keeping the server's own `send` for the hot path: a live event's message is one
    prebuilt dict handed to every subscriber (the wrapper only re-checks a state the handler tracks itself). Under
    `cliplog serve` that is the WebSocket protocol's own `send` (api/server.py puts it in the scope), without the
    framework's wrappers; elsewhere, the `send` the framework hands over."""

    __slots__ = ("raw_send",)

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self.raw_send = scope.get(SCOPE_SEND) or send  # type: ignore[call-overload]


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:120].decode(errors="ignore")


def _send_timeout(socket: WebSocket) -> float:
    return socket.app.state.services.settings.ws_send_timeout


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    """Close, waiting at most `CLIPLOG_WS_SEND_TIMEOUT` for the client to take the close frame."""
    with suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
        async with asyncio.timeout(_send_timeout(socket)):
            await socket.close(code=code, reason=_reason(reason))


async def _reset(socket: WebSocket, detail: str) -> None:
    with suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
        async with asyncio.timeout(_send_timeout(socket)):
            await socket.send_text(_encode(ResetMessage(detail)).decode())
    await _close(socket, CLOSE_RESET, detail)


async def _watch_disconnect(socket: WebSocket, sub: Subscription) -> None:
    """Read (and ignore) what the client sends, so that a disconnect is noticed while the feed is idle."""
    try:
        while (await socket.receive())["type"] != "websocket.disconnect":
            pass
    except Exception:  # noqa: BLE001 - any failure here means the socket is gone
        pass
    finally:
        sub.close()


@websocket("/api/events/ws", websocket_class=FeedSocket)
async def events_socket(socket: FeedSocket) -> None:
    """Backlog after `after`, then live events; pings after silence; see the module docstring for close codes."""
    await socket.accept()
    services: Services = socket.app.state.services
    broker: FeedBroker = socket.app.state.feed
    sockets: OpenSockets = socket.app.state.sockets
    params = socket.query_params
    if not origin_allowed(socket.headers.get("origin"), socket.headers.get("host"), services.settings.cors_origins):
        return await _close(socket, CLOSE_ORIGIN, "this origin may not open the feed (CLIPLOG_CORS_ORIGINS)")
    token = bearer(socket.headers.get("authorization")) or params.get("token") or None
    try:
        user = await user_for_token(services.pool, token)
        start = parse_after(params.get("after"))
        project = await _project_filter(services, params.get("project_id") or None, user)
        epoch, position, given, _ = await resolve_after(services, broker, start)
    except Unauthorized as error:
        return await _close(socket, CLOSE_UNAUTHORIZED, str(error))
    except InvalidInput as error:
        return await _close(socket, CLOSE_BAD_INPUT, error.detail)
    except NotFound as error:
        return await _close(socket, CLOSE_NOT_FOUND, error.detail)
    except CursorFromAnotherLog as error:
        return await _reset(socket, error.detail)
    except (*UNAVAILABLE, Unavailable, asyncpg.PostgresError) as error:
        log.warning("feed socket: PostgreSQL unavailable: %s: %s", type(error).__name__, error)
        return await _close(socket, CLOSE_UNAVAILABLE, "PostgreSQL is unavailable; reconnect shortly")
    token_hash = hash_token(token or "")
    sub = broker.subscribe(user, project)
    if not sockets.add(token_hash, sub):
        broker.unsubscribe(sub)
        limit = sockets.per_token
        return await _close(socket, CLOSE_TOO_MANY, f"this token has {limit} feed sockets open (CLIPLOG_WS_PER_TOKEN)")
    try:
        await _stream(socket, services, broker, sub, user, project, epoch, position, given)
    finally:
        revoked = sockets.remove(token_hash, sub)
    if revoked:
        await _close(socket, CLOSE_UNAUTHORIZED, "the token was revoked")


class _Gone(Exception):
    """The client has disconnected."""


# What a send to a socket that has gone raises: uvicorn's ClientDisconnected is an OSError; a RuntimeError once
# uvicorn itself has closed the connection (a protocol ping unanswered) and the handler has not noticed yet.
GONE = (WebSocketDisconnect, OSError, RuntimeError)


async def _send(send: Send, sub: Subscription, message: Any) -> None:
    """One bounded send (see the module docstring)."""
    sub.sending_since = asyncio.get_running_loop().time()
    try:
        await send(message)
    except GONE:
        raise _Gone from None
    finally:
        sub.sending_since = 0.0


async def _stream(
    socket: FeedSocket,
    services: Services,
    broker: FeedBroker,
    sub: Subscription,
    user: str,
    project: str | None,
    epoch: UUID,
    position: int,
    given: str,
) -> None:
    loop = asyncio.get_running_loop()
    send = socket.raw_send
    sub.last_sent = loop.time()
    task = asyncio.current_task()
    assert task is not None
    sub.on_stall = task.cancel  # the broker cancels a send stuck for CLIPLOG_WS_SEND_TIMEOUT
    watcher = asyncio.create_task(_watch_disconnect(socket, sub))
    last = position  # the last position this client has (sent, or its cursor)
    last_cursor = given
    try:
        # Backlog: (cursor, sub.start] from the database, page by page; live events after sub.start wait in the
        # subscription's buffer meanwhile (restarted further on if it overflows during a long backlog).
        covered = position
        while True:
            if sub.closed:
                return
            if sub.reset:
                return await _reset(socket, sub.reset)
            if sub.overflowed:
                broker.restart(sub)
            if sub.start is None:  # the broker has not reached the database yet: wait (woken when it has, or idle)
                await sub.wait(broker.idle_after)
                if sub.start is None and loop.time() - sub.last_sent >= broker.idle_after:
                    await _send(send, sub, PING_MESSAGE)
                    sub.last_sent = loop.time()
                continue
            target = sub.start
            if covered >= target:
                break
            page = await read_page(
                services.pool, epoch, covered, BACKLOG_PAGE, user=user, project_id=project, upto=target
            )
            for event in page:
                if event.position > last:
                    await _send(send, sub, render(event))
                    last, last_cursor = event.position, event.cursor
            if page:
                sub.last_sent = loop.time()
            covered = page[-1].position if len(page) == BACKLOG_PAGE else target
        await _send(send, sub, {"type": "websocket.send", "text": _encode(CaughtUpMessage(last_cursor)).decode()})
        sub.last_sent = loop.time()

        # Live: what the broker delivers, in order. No timer per wait: the broker wakes idle subscriptions. While this
        # task waits with nothing queued, the broker writes each event's prebuilt frame to the connection itself
        # (`sub.direct`; eventlog/broker.py), up to `sub.sent_upto`: one task wake-up fewer per event and subscriber.
        sub.direct = socket.scope.get(SCOPE_PROTOCOL)  # type: ignore[call-overload]
        while True:
            sub.sent_upto = last
            waiter = sub.waiter()
            if waiter is not None:
                sub.parked = True
                try:
                    await waiter
                finally:
                    sub.parked = False
                last = sub.sent_upto
            if sub.closed:
                return
            if sub.reset:
                return await _reset(socket, sub.reset)
            if sub.overflowed:
                reason = "too slow: buffer overflowed; reconnect from your last cursor"
                return await _close(socket, CLOSE_TOO_SLOW, reason)
            items = sub.take()
            if items:
                sub.sending_since = loop.time()  # `_send`, inlined: once per batch, not per event and subscriber
                for event_position, message in items:
                    if event_position > last:
                        try:
                            await send(message)
                        except GONE:
                            raise _Gone from None
                        last = event_position
                sub.sending_since = 0.0
                sub.last_sent = loop.time()
            progress = sub.take_progress()  # after the events it may follow; never counted against the buffer
            for message in progress:
                await _send(send, sub, message)
            if progress:
                sub.last_sent = loop.time()
            if not items and not progress and loop.time() - sub.last_sent >= broker.idle_after:
                await _send(send, sub, PING_MESSAGE)
                sub.last_sent = loop.time()
    except _Gone:
        pass
    except asyncio.CancelledError:
        if not sub.stalled:
            raise
        task.uncancel()  # the broker stopped a send stuck for CLIPLOG_WS_SEND_TIMEOUT: the client is not reading
        timeout = broker.send_timeout
        await _close(socket, CLOSE_TOO_SLOW, f"too slow: not reading for {timeout:g} s; reconnect from your last cursor")
    except (*UNAVAILABLE, Unavailable, asyncpg.PostgresError) as error:
        log.warning("feed socket: PostgreSQL unavailable: %s: %s", type(error).__name__, error)
        await _close(socket, CLOSE_UNAVAILABLE, "PostgreSQL is unavailable; reconnect from your last cursor")
    finally:
        broker.unsubscribe(sub)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


ROUTES = [list_events, events_socket]
