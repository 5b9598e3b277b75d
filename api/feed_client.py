"""A Python client for the event feed (used by `cliplog tail`).

    client = FeedClient("http://127.0.0.1:8000", token, project_id=None, after="latest")
    async for event in client.events():     # for ever; raises FeedError / CursorReset on permanent errors
        print(event["type"], client.cursor)

It follows `GET /api/events/ws` and keeps the cursor of the last event it yielded. When the socket drops (or is
silent for `silence_timeout` seconds, i.e. missed two pings) it reconnects from that cursor with exponential
backoff and jitter, and while the socket is down it long-polls `GET /api/events` so that events keep coming. Each
event is yielded once, in position order (anything at or below the last position is dropped). `after="latest"` is
resolved to a concrete cursor first, so a reconnection before the first event loses nothing. A client far behind
first catches up through the NDJSON stream (`catch_up`: `GET /api/events` with `Accept: application/x-ndjson`, the
bulk path), then follows the socket.

Besides events the socket sends `{"type": "caught_up", "cursor": ...}` once its backlog is sent and
`{"type": "progress", ...}` for running clips: neither is an event and neither moves the cursor (a progress message
has none; a client that misses one loses nothing). They are handed to `on_caught_up(cursor)` and
`on_progress(message)` when given, else ignored, as is any message type this client does not know.

Permanent errors end the iteration: `FeedError` (bad token 401/4401, origin not allowed 4403, project not
visible 404/4404, bad input 400/4400) and its subclass `CursorReset` (410/4410: the cursor belongs to another log; start again from
`latest`). Everything else (connection refused, 503/4503, 4408 "too slow", 4429 "too many sockets", 1012 "server restarting") is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from datetime import datetime
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit
from uuid import UUID

import httpx
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from domain.events import SCHEMA_VERSION
from eventlog import cursor, export

Mode = str  # "live" | "polling" | "reconnecting" | "offline"

PERMANENT_CLOSE = {4400: 400, 4401: 401, 4403: 403, 4404: 404}
RESET_CLOSE = 4410


class FeedError(Exception):
    """A permanent refusal: retrying with the same token, project and cursor cannot succeed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class CursorReset(FeedError):
    """The cursor comes from another event log (the database was reset or restored)."""

    def __init__(self, detail: str) -> None:
        super().__init__(410, detail)


class _Retry(Exception):
    """A transient failure: back off, poll meanwhile, reconnect."""


class FeedUnavailable(_Retry):
    """The API could not answer (unreachable, 503, cut off): try again later."""


# Bulk catch-up is bound by the server's CPU: the client, beside the service, asks for no compression (docs/http.md).
NDJSON = {"Accept": "application/x-ndjson", "Accept-Encoding": "identity"}
BULK = 1000  # `events` catches up through the NDJSON stream until a stream brings fewer events than this


class FeedClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        poll_wait: float = 25.0,
        silence_timeout: float = 35.0,
        on_mode: Callable[[Mode], None] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_caught_up: Callable[[str], None] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.project_id = project_id
        self.cursor: str | None = after or None  # None: the beginning of the log
        self.position = 0  # the last position yielded (dedup)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_wait = poll_wait
        self.silence_timeout = silence_timeout
        self.on_mode = on_mode
        self.on_progress = on_progress
        self.on_caught_up = on_caught_up
        self.rng = rng
        self.mode: Mode = "reconnecting"

    # Public --------------------------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        failures = 0
        async with httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}) as http:
            while self.cursor == "latest":  # pin the head down first
                try:
                    async for event in self._poll_once(http, wait=0):
                        yield event
                except _Retry:
                    failures += 1
                    await asyncio.sleep(self.delay(failures))
            try:  # a long way behind: the bulk of it through the NDJSON stream, the rest from the socket's backlog
                async with contextlib.aclosing(self._catch_up(http, BULK)) as caught_up:
                    async for event in caught_up:
                        yield event
            except _Retry:
                pass  # the socket's backlog (or polling) brings the same events
            while True:
                try:
                    async with contextlib.aclosing(self._socket()) as stream:
                        async for event in stream:
                            failures = 0
                            yield event
                    failures = 0  # closed on purpose by the server (too slow, restarting): come back soon
                except _Retry:
                    failures += 1
                self._set_mode("reconnecting")
                deadline = asyncio.get_running_loop().time() + self.delay(failures)
                async with contextlib.aclosing(self._poll_until(http, deadline)) as polled:
                    async for event in polled:
                        yield event

    async def catch_up(self) -> AsyncIterator[dict[str, Any]]:
        """Every event after the cursor up to the log's head, through the NDJSON stream (`Accept:
        application/x-ndjson`), again from the last event's cursor until a stream brings nothing new; then `cursor`
        is where to follow from. Raises FeedError / CursorReset on refusals, FeedUnavailable when the API cannot
        answer."""
        async with httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}) as http:
            async with contextlib.aclosing(self._catch_up(http, 1)) as caught_up:
                async for event in caught_up:
                    yield event

    def delay(self, failures: int) -> float:
        """Exponential backoff with jitter: a random value in [d/2, d], d = min(max, base * 2**failures)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(failures, 30))
        return ceiling / 2 + self.rng() * ceiling / 2

    # Internals -----------------------------------------------------------------------------------------------------

    def _set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            self.mode = mode
            if self.on_mode is not None:
                self.on_mode(mode)

    def _accept(self, event: dict[str, Any]) -> bool:
        if event["position"] <= self.position:
            return False
        self.position = event["position"]
        self.cursor = event["cursor"]
        return True

    def _query(self, **extra: object) -> str:
        params: dict[str, object] = {}
        if self.cursor:
            params["after"] = self.cursor
        if self.project_id:
            params["project_id"] = self.project_id
        params.update(extra)
        return urlencode(params)

    def _ws_url(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, parts.netloc, parts.path + "/api/events/ws", self._query(), ""))

    async def _socket(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async with connect(
                self._ws_url(),
                additional_headers={"Authorization": f"Bearer {self.token}"},
                compression=None,
                open_timeout=10,
                close_timeout=2,
                proxy=None,
            ) as ws:
                self._set_mode("live")
                while True:
                    try:
                        async with asyncio.timeout(self.silence_timeout):
                            raw = await ws.recv()
                    except TimeoutError:
                        raise _Retry("the socket is silent") from None
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "event":
                        if self._accept(message["event"]):
                            yield message["event"]
                    elif kind == "reset":
                        raise CursorReset(message.get("detail", "cursor from another log"))
                    elif kind == "progress" and self.on_progress is not None:
                        self.on_progress(message)
                    elif kind == "caught_up" and self.on_caught_up is not None:
                        self.on_caught_up(message.get("cursor", ""))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
            reason = closed.rcvd.reason if closed.rcvd is not None else ""
            if code in PERMANENT_CLOSE:
                raise FeedError(PERMANENT_CLOSE[code], reason) from None
            if code == RESET_CLOSE:
                raise CursorReset(reason) from None
            if code in (1000, 1001, 1012, 4408):
                return  # closed on purpose: reconnect from the cursor
            raise _Retry(f"socket closed with {code}") from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
            raise _Retry(f"cannot open the socket: {error}") from None

    async def _catch_up(self, http: httpx.AsyncClient, enough: int) -> AsyncIterator[dict[str, Any]]:
        """NDJSON streams from the cursor until one brings fewer than `enough` events."""
        decode_lines = msgspec.json.Decoder().decode_lines
        while True:
            count = 0
            try:
                async with http.stream("GET", f"/api/events?{self._query()}", headers=NDJSON, timeout=60) as response:
                    if response.status_code != 200:
                        await response.aread()
                        self._refused(response)
                        raise FeedUnavailable(f"catch-up answered {response.status_code}")
                    rest = b""
                    async for chunk in response.aiter_bytes():
                        lines, _, rest = (rest + chunk).rpartition(b"\n")
                        for event in decode_lines(lines) if lines else ():
                            count += 1
                            if self._accept(event):
                                yield event
            except httpx.HTTPError as error:
                raise FeedUnavailable(f"catch-up failed: {error}") from None
            if count < enough:
                return

    def _refused(self, response: httpx.Response) -> None:
        """Raise FeedError / CursorReset for a permanent refusal (400, 401, 404, 410)."""
        if response.status_code in (400, 401, 404, 410):
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise (CursorReset(detail) if response.status_code == 410 else FeedError(response.status_code, detail))

    async def _poll_until(self, http: httpx.AsyncClient, deadline: float) -> AsyncIterator[dict[str, Any]]:
        """Long-poll until `deadline` (the next socket attempt), sleeping instead while polling fails too."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0.05:
            try:
                async for event in self._poll_once(http, wait=min(self.poll_wait, remaining)):
                    yield event
            except _Retry:
                await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def _poll_once(self, http: httpx.AsyncClient, wait: float) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                response = await http.get(
                    f"/api/events?{self._query(limit=1000, wait=f'{wait:.3f}')}", timeout=wait + 10
                )
            except httpx.HTTPError as error:
                self._set_mode("offline")
                raise _Retry(f"poll failed: {error}") from None
            self._refused(response)
            if response.status_code != 200:
                self._set_mode("reconnecting")
                raise _Retry(f"poll answered {response.status_code}")
            self._set_mode("polling")
            page = response.json()
            for event in page["events"]:
                if self._accept(event):
                    yield event
            if not page["events"] and self.cursor in (None, "latest"):
                self.cursor = page["next_cursor"]
            if len(page["events"]) < 1000:
                return
            wait = 0


# Export over HTTP -----------------------------------------------------------------------------------------------

# The NDJSON answer's headers (api/feed.py, docs/feed.md).
EPOCH_HEADER, HEAD_HEADER, USER_HEADER = "Cliplog-Epoch", "Cliplog-Head", "Cliplog-User"


class _FeedEvent(msgspec.Struct, frozen=True):
    """A feed event (`eventlog.pages.EventView`) with `data` kept as the JSON text the log holds."""

    position: int
    cursor: str
    type: str
    project_id: str
    clip_id: str
    version: int
    recorded_at: datetime
    clip_status: str
    data: msgspec.Raw
    schema_version: int | None = None  # None: a server from before the feed carried it


async def export_events(
    url: str,
    token: str,
    selection: export.Selection,
    write: Callable[[bytes], object],
    *,
    after: str | None = None,
    now: datetime,
    on_progress: Callable[[int], None] = lambda n: None,
) -> export.Header:
    """`cliplog export --url`: the events `cliplog export` would write for `selection` (the token's projects for
    the whole log), read from a running cliplog through the NDJSON stream, as export lines (`write`, one call per
    line); returns the export's header, which the caller writes first. The range is `(after, head]`, the head being
    the log's when the first stream answered (its `Cliplog-Head`); streams go on from the last event's cursor until
    the head is passed or a stream brings nothing new (a stream cut short by the server is continued)."""
    if selection.clip_id is not None and selection.project_id is None:
        raise FeedError(400, "a clip is named by its project too")
    decode_lines = msgspec.json.Decoder(_FeedEvent).decode_lines
    encode = msgspec.json.Encoder().encode
    line_of = export.RawEvent
    after_position = cursor.decode(after).position if after else 0
    position, resume = after_position, after
    count = 0
    first: httpx.Headers | None = None
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}) as http:
        upto: int | None = None
        passed = False  # an event beyond `upto` came: everything up to it is written
        while not passed and (upto is None or position < upto):
            params = {k: v for k, v in (("after", resume), ("project_id", selection.project_id)) if v}
            got = 0
            try:
                async with http.stream("GET", f"/api/events?{urlencode(params)}", headers=NDJSON, timeout=60) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        _refuse(answer)
                        raise FeedUnavailable(f"the NDJSON stream answered {answer.status_code}")
                    if first is None:
                        first = answer.headers
                        missing = [h for h in (EPOCH_HEADER, HEAD_HEADER, USER_HEADER) if h not in first]
                        if missing:
                            raise FeedError(501, f"this server's feed does not say {', '.join(missing)}: upgrade it")
                        upto = max(after_position, cursor.decode(first[HEAD_HEADER]).position)
                    rest = b""
                    async for chunk in answer.aiter_bytes():
                        lines, _, rest = (rest + chunk).rpartition(b"\n")
                        if not lines:
                            continue
                        written = 0
                        for event in decode_lines(lines):
                            if event.position > upto:  # type: ignore[operator]
                                passed = True
                                break
                            got += 1
                            position, resume = event.position, event.cursor
                            if selection.clip_id is not None and event.clip_id != selection.clip_id:
                                continue
                            if event.schema_version is None:
                                raise FeedError(501, "this server's feed events carry no schema_version: upgrade it")
                            if event.schema_version > SCHEMA_VERSION.get(event.type, 0):
                                raise FeedError(
                                    501, f"the server's {event.type} events are newer (schema version "
                                    f"{event.schema_version}) than this cliplog knows: upgrade it"
                                )  # fmt: skip
                            write(encode(line_of(
                                event.position, f"{event.project_id}/{event.clip_id}", event.project_id,
                                event.clip_id, event.version, event.type, event.schema_version, event.data,
                                event.clip_status, event.recorded_at,
                            )) + b"\n")  # fmt: skip
                            written += 1
                        count += written
                        on_progress(written)
                        if passed or position >= upto:  # type: ignore[operator]
                            break
            except httpx.HTTPError as error:
                raise FeedUnavailable(f"the NDJSON stream failed: {error}") from None
            except msgspec.DecodeError as error:
                raise FeedError(502, f"the answer is not cliplog's NDJSON stream: {error}") from None
            if not got:
                break  # nothing more up to the head in this selection
        assert first is not None and upto is not None
        user = first[USER_HEADER]
        if selection.project_id is not None:
            owners = {selection.project_id: user}
        else:
            try:
                projects = await http.get("/api/clips/projects")
            except httpx.HTTPError as error:
                raise FeedUnavailable(f"listing the projects failed: {error}") from None
            _refuse(projects)
            if projects.status_code != 200:
                raise FeedUnavailable(f"listing the projects answered {projects.status_code}")
            owners = {p["project_id"]: user for p in projects.json()}
    epoch = UUID(first[EPOCH_HEADER])
    head = cursor.decode(first[HEAD_HEADER])
    upto_cursor = first[HEAD_HEADER] if head.position == upto and upto else (after if upto else None)
    return export.Header(
        format=export.FORMAT, format_version=export.FORMAT_VERSION, epoch=epoch, exported_at=now,
        schema_versions=dict(SCHEMA_VERSION), selection=selection,
        range=export.Range(after=after_position, upto=upto, after_cursor=after, upto_cursor=upto_cursor),
        count=count, owners=owners,
    )  # fmt: skip


def _refuse(response: httpx.Response) -> None:
    """FeedError / CursorReset for a refusal (4xx), with the API's detail."""
    if 400 <= response.status_code < 500:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise CursorReset(detail) if response.status_code == 410 else FeedError(response.status_code, detail)
