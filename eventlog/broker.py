"""The feed's broker: one `FeedBroker` per API process follows the whole log and hands new events to that
process's subscribers:

- a dedicated asyncpg connection (made by the `connect` it is given) LISTENs on `store.NOTIFY_CHANNEL`, only to wake the broker up (reconnected with
  backoff when PostgreSQL restarts or the connection dies; checked with a `SELECT 1` now and then);
- a pump re-reads the log by position (`read_all`, pages of 1000) after every wake-up, and at least every
  `poll_interval` seconds, because a NOTIFY is sent after commit and is lost with its sender. When a NOTIFY names a
  position the safe horizon does not reach yet (an older transaction is still open), it re-reads after 1, 2, 4 ...
  ms instead of waiting for the next poll;
- each event is matched against the subscribers by its project's owner (immutable once claimed, cached), so a
  project a user claims after subscribing reaches that user's subscribers without re-subscribing, and rendered to
  its JSON message once for all of them;
- `deliver` never awaits a subscriber. A live WebSocket subscription whose owner waits with nothing queued gets the
  event's prebuilt frame written to its connection at once (`Subscription.direct`, `runtime.websocket.write_now`:
  only when uvicorn's own `send` would write it at once), without waking its owner; 1,000 subscribers then cost
  1,000 socket writes per event, not 1,000 task switches as well. Otherwise the event is queued and the owner woken.
  Each live subscription has a bounded buffer; past it the subscription is
  marked `overflowed`, its buffer dropped, and its owner (the WebSocket handler) closes it (the client resumes from
  its cursor). A slow consumer therefore never delays the others and never holds more than `buffer` events;
- one timer for all subscriptions (`_tick`) wakes those idle for `idle_after` seconds (their owner pings), and
  stops those whose owner has been stuck in one send for `send_timeout` seconds (a client that stopped reading):
  it marks them `stalled` and calls their `on_stall` (the handler cancels its send and closes the socket). Owners
  mark a send with `sending_since`, one write per batch: a timer per send would cost as much as the send;
- the same connection LISTENs on `progress.PROGRESS_CHANNEL`: each notification is a running attempt's progress
  message (eventlog/progress.py), rendered once and handed to the live subscriptions that may see its project. It is
  not an event: it has no position and no cursor, each subscription keeps only the latest per clip (at most
  `PROGRESS_LIMIT` clips), and one whose event buffer is half full (a slow reader) gets none, so progress never
  pushes a subscriber towards `overflowed`;
- now and then it checks the log's identity (epoch, and the event at its head): when the database was replaced or
  restored under it, every subscription gets `reset` (their cursors mean nothing any more) and the broker restarts
  from the new head.

Backlog to live without gap or duplicate: a subscription records `start`, the broker's head when it subscribed
(or when the broker first reached the database). The broker delivers to it every event after `start`, in order.
The subscriber reads the backlog `(cursor, start]` itself with `read_page(upto=start)`, then takes the live events,
skipping any at or below the last position it sent. Both halves are complete, so their union is the log after the
cursor, exactly once. If the live buffer overflows while the backlog is still being read, the subscriber calls
`restart` (a new `start` at the broker's current head) and reads the backlog further, instead of failing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from typing import Any, Awaitable, Callable, Iterable, Sequence
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import Unavailable
from eventlog import cursor, store
from runtime.websocket import text_frame, write_now
from eventlog.pages import EventView, head, read_all
from eventlog.progress import PROGRESS_CHANNEL, ProgressMessage, decode_message

log = logging.getLogger("cliplog.feed")

UNAVAILABLE = store.DATABASE_UNAVAILABLE

LISTENER_NAME = "cliplog-feed-listener"
RESET_DETAIL = "the event log was reset or restored under this subscription: reload, then follow from the head"


class EventMessage(msgspec.Struct, tag="event", tag_field="type"):
    """The WebSocket message that carries an event: `{"type": "event", "event": {...}}`."""

    event: EventView


_encode = msgspec.json.Encoder().encode


# An extra key of a rendered ASGI message: the message's whole WebSocket frame (runtime/websocket.py). A server that
# knows the key writes these bytes as they are (api/server.py: framed once per event instead of once per
# subscriber), and so does the broker for a subscriber waiting with nothing queued (`Subscription.direct`); any
# other server ignores it.
PREBUILT_FRAME = "cliplog.frame"


def _message(payload: bytes) -> dict[str, Any]:
    return {"type": "websocket.send", "text": payload.decode(), PREBUILT_FRAME: text_frame(payload)}


def render(event: EventView) -> dict[str, Any]:
    """An event's ASGI message (built once; uvicorn only reads it, so every subscriber sends the same dict)."""
    return _message(_encode(EventMessage(event)))


def render_progress(message: ProgressMessage) -> dict[str, Any]:
    """A progress message's ASGI message (built once for all subscribers)."""
    return _message(_encode(message))


PROGRESS_LIMIT = 256  # clips whose latest progress one subscription holds

# Subscriptions ---------------------------------------------------------------------------------------------------


class Subscription:
    """One subscriber's view of the broker: a bounded buffer of `(position, message)` and a few flags.

    `live=False` (a long poll) keeps no buffer: a matching event only wakes the waiter, which re-reads the log.
    """

    __slots__ = (
        "user", "project_id", "live", "start", "limit", "overflowed", "reset", "closed", "last_sent",
        "sending_since", "stalled", "on_stall", "direct", "parked", "sent_upto", "_items", "_poked", "_waiter",
        "_progress",
    )

    def __init__(self, user: str, project_id: str | None, live: bool, limit: int) -> None:
        self.user = user
        self.project_id = project_id
        self.live = live
        self.limit = limit
        self.start: int | None = None  # the broker delivers every event after this position
        self.overflowed = False
        self.reset: str | None = None
        self.closed = False
        self.last_sent = 0.0  # loop time the subscriber last sent something (the broker wakes it when idle)
        self.sending_since = 0.0  # loop time its owner began the send under way; 0.0 when not sending
        self.stalled = False  # a send took longer than the broker's `send_timeout`
        self.on_stall: Callable[[], None] | None = None  # what the broker calls then (the owner's cancel)
        # The fast path (module docstring): the owner's uvicorn WebSocket connection, for `runtime.websocket.write_now`
        # (None: none, or not a live WebSocket); `parked` while the owner waits with everything up to `sent_upto` sent.
        self.direct: Any = None
        self.parked = False
        self.sent_upto = 0
        self._items: collections.deque[tuple[int, Any]] = collections.deque()
        self._poked = False  # a matching event arrived since the last `take` (what a long poll waits for)
        self._waiter: asyncio.Future[None] | None = None
        self._progress: dict[tuple[str, str], Any] = {}  # (project, clip) -> its latest progress message

    def wants(self, event: EventView) -> bool:
        return (
            self.start is not None
            and event.position > self.start
            and (self.project_id is None or self.project_id == event.project_id)
            and not (self.overflowed or self.reset or self.closed)
        )

    def deliver(self, position: int, message: Any) -> None:
        self._poked = True
        if self.live:
            items = self._items
            if len(items) < self.limit:
                items.append((position, message))
            else:
                self.overflowed = True
                items.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver_progress(self, key: tuple[str, str], message: Any) -> None:
        """Keep `message` as the latest progress of clip `key`; dropped when this subscriber is behind on events
        (its buffer half full) or already holds progress of `PROGRESS_LIMIT` other clips."""
        if len(self._items) * 2 >= self.limit or (key not in self._progress and len(self._progress) >= PROGRESS_LIMIT):
            return
        self._progress[key] = message
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_progress(self) -> list[Any]:
        items = list(self._progress.values())
        self._progress.clear()
        return items

    @property
    def pending(self) -> bool:
        return self._poked or bool(self._progress) or self.overflowed or self.reset is not None or self.closed

    def take(self) -> list[tuple[int, Any]]:
        self._poked = False
        items = list(self._items)
        self._items.clear()
        return items

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None] | None:
        """A future `wake` (or a delivery) resolves; None if something is pending already. The hot path's `wait`."""
        if self.pending:
            return None
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def wait(self, timeout: float | None = None) -> bool:
        """Until something is pending or someone calls `wake` (the broker: `start` assigned, or idle for
        `idle_after`), at most `timeout` s if given; True if anything is pending."""
        if not self.pending and (timeout is None or timeout > 0):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    async with asyncio.timeout(timeout):
                        await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        return self.pending

    def close(self) -> None:
        """The subscriber has gone (its socket closed): wake whoever waits so that it cleans up."""
        self.closed = True
        self.wake()


# The broker -------------------------------------------------------------------------------------------------------


class FeedBroker:
    """See the module docstring. `render(event)` makes an event's message for live subscribers (once per
    event, whatever the number of subscribers); the broker hands it over as is. Live subscriptions idle for
    `idle_after` seconds are woken (their owner pings its client); one stuck in a send for `send_timeout` seconds
    is stalled."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        render: Callable[[EventView], Any],
        *,
        buffer: int = 1000,
        poll_interval: float = 1.0,
        idle_after: float = 15.0,
        send_timeout: float = 10.0,
        keepalive_interval: float = 10.0,
        page: int = 1000,
    ) -> None:
        self.pool = pool
        self.connect = connect
        self.render = render
        self.buffer = buffer
        self.poll_interval = poll_interval
        self.idle_after = idle_after
        self.send_timeout = send_timeout
        self.keepalive_interval = keepalive_interval
        self.page = page
        self.head: int | None = None  # last position read and delivered; None until the database was reached
        self.epoch: UUID | None = None
        self.listening = False  # the LISTEN connection is up
        self._head_print = 0
        self._notified = 0  # highest position named by a NOTIFY
        self._owners: dict[str, str] = {}
        self._by_user: dict[str, set[Subscription]] = {}
        self._live = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lookups: set[asyncio.Task[None]] = set()  # owner look-ups for progress of unknown projects
        self._stopping = False
        self._listener: asyncpg.Connection | None = None
        self._last_identity_check = 0.0

    # Subscribers ---------------------------------------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        """Live (WebSocket) subscriptions on this process."""
        return self._live

    def subscribe(self, user: str, project_id: str | None = None, *, live: bool = True) -> Subscription:
        sub = Subscription(user, project_id, live, self.buffer)
        sub.start = self.head
        self._by_user.setdefault(user, set()).add(sub)
        if live:
            self._live += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._by_user.get(sub.user)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_user[sub.user]
        if sub.live:
            self._live -= 1

    @property
    def known(self) -> tuple[UUID, int, int] | None:
        """`(epoch, position, fingerprint)` of the broker's head: every transaction up to it has finished."""
        if self.epoch is None or self.head is None:
            return None
        return self.epoch, self.head, self._head_print

    def restart(self, sub: Subscription) -> None:
        """Drop the subscription's buffer and deliver from the current head on (the caller reads up to it)."""
        sub.take()
        sub.overflowed = False
        sub.start = self.head

    def _all(self) -> Iterable[Subscription]:
        return [sub for subs in self._by_user.values() for sub in subs]

    # Life cycle ----------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._listen(), name="cliplog-feed-listen"),
            asyncio.create_task(self._pump(), name="cliplog-feed-pump"),
            asyncio.create_task(self._tick(), name="cliplog-feed-tick"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in [*self._tasks, *self._lookups]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._lookups, return_exceptions=True)
        self._tasks = []
        for sub in self._all():
            sub.close()

    def wake(self) -> None:
        self._wake.set()

    async def _tick(self) -> None:
        """Wake live subscriptions idle for `idle_after` seconds and stall those stuck in a send for
        `send_timeout` (one timer for all, not one per wait or send)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.01, min(1.0, self.idle_after / 4, self.send_timeout / 4)))
            now = loop.time()
            due, stuck = now - self.idle_after, now - self.send_timeout
            for sub in self._all():
                if not sub.live:
                    continue
                if sub.sending_since and sub.sending_since <= stuck:
                    self.stall(sub)
                elif sub.last_sent <= due:
                    sub.wake()

    @staticmethod
    def stall(sub: Subscription) -> None:
        sub.sending_since = 0.0
        sub.stalled = True
        if sub.on_stall is not None:
            sub.on_stall()

    # The LISTEN connection -------------------------------------------------------------------------------------------

    def _on_progress(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = decode_message(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring a malformed progress notification: %.200s", payload)
            return
        owner = self._owners.get(message.project_id)
        if owner is not None:
            self.deliver_progress(owner, message)
        elif len(self._lookups) < 64:  # a project no event has named since this broker started: look it up
            task = asyncio.create_task(self._deliver_progress_later(message))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)

    async def _deliver_progress_later(self, message: ProgressMessage) -> None:
        try:
            owner = await self.pool.fetchval("SELECT owner FROM projects WHERE project_id = $1", message.project_id)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            return
        if owner is not None:
            self._owners[message.project_id] = owner
            self.deliver_progress(owner, message)

    def deliver_progress(self, owner: str, message: ProgressMessage) -> None:
        """Hand a progress message to `owner`'s live subscriptions that follow its project; never awaits."""
        rendered: Any = None
        for sub in self._by_user.get(owner, ()):
            if not sub.live or sub.start is None or sub.overflowed or sub.reset is not None or sub.closed:
                continue
            if sub.project_id is not None and sub.project_id != message.project_id:
                continue
            if rendered is None:
                rendered = render_progress(message)
            sub.deliver_progress((message.project_id, message.clip_id), rendered)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self._notified = max(self._notified, int(payload))
        except ValueError:
            pass
        self._wake.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping:
            lost = asyncio.Event()
            try:
                conn = await self.connect()
                self._listener = conn
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(store.NOTIFY_CHANNEL, self._on_notify)
                await conn.add_listener(PROGRESS_CHANNEL, self._on_progress)
                self.listening = True
                self._wake.set()  # whatever committed while nobody listened
                if backoff > 0.1:
                    log.info("feed listener reconnected")
                backoff = 0.1
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(self.keepalive_interval):
                            await lost.wait()
                    except TimeoutError:
                        async with asyncio.timeout(5):
                            await conn.fetchval("SELECT 1")  # a dead TCP connection shows here
            except asyncio.CancelledError:
                raise
            except (*UNAVAILABLE, asyncpg.PostgresError) as error:
                log.warning("feed listener lost PostgreSQL (%s: %s); reconnecting", type(error).__name__, error)
            finally:
                self.listening = False
                if self._listener is not None:
                    self._listener.terminate()
                    self._listener = None
            if lost.is_set():
                log.warning("feed listener connection closed; reconnecting")
            self._wake.set()  # the pump polls while the listener is down
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, 5.0)

    # The pump --------------------------------------------------------------------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        retry = 0
        failures = 0
        while not self._stopping:
            behind = self.head is not None and self._notified > self.head
            delay = min(self.poll_interval, 0.001 * 2**retry) if behind else self.poll_interval
            if failures:
                delay = min(5.0, self.poll_interval * 2 ** min(failures, 3))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if self.head is None or loop.time() - self._last_identity_check >= self.poll_interval:
                    await self._check_identity()
                    self._last_identity_check = loop.time()
                await self._catch_up()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (*UNAVAILABLE, asyncpg.PostgresError, Unavailable) as error:
                failures += 1
                if failures == 1:
                    log.warning("feed cannot read the log (%s: %s); retrying", type(error).__name__, error)
                continue
            except Exception:  # a bug: log it, keep the feed alive
                failures += 1
                log.exception("feed pump failed")
                continue
            retry = retry + 1 if self.head is not None and self._notified > self.head else 0

    async def _check_identity(self) -> None:
        row = await self.pool.fetchrow(
            "SELECT l.epoch, e.stream, e.version, e.recorded_at FROM log_identity l "
            "LEFT JOIN events e ON e.position = $1",
            self.head or 0,
        )
        if row is None:
            raise Unavailable("the event log has no identity yet: run `cliplog migrate`")
        same = self.head is not None and row["epoch"] == self.epoch
        if same and self.head:
            same = row["stream"] is not None and (
                cursor.fingerprint(row["stream"], row["version"], row["recorded_at"]) == self._head_print
            )
        if same:
            return
        position, print_ = await head(self.pool)
        if self.head is not None:
            log.warning(
                "the event log was replaced or restored (head %s -> %s); resetting subscribers", self.head, position
            )
            for sub in self._all():
                sub.reset = RESET_DETAIL
                sub.take()
                sub.wake()
            self._owners.clear()
            self._notified = 0
        self.epoch, self.head, self._head_print = row["epoch"], position, print_
        for sub in self._all():
            if sub.start is None:
                sub.start = position
                sub.wake()

    async def _catch_up(self) -> None:
        while self.head is not None:
            assert self.epoch is not None
            events = await read_all(self.pool, self.epoch, self.head, self.page)
            if not events:
                return
            await self._learn_owners(events)
            self.deliver(events)
            if len(events) < self.page:
                return

    async def _learn_owners(self, events: Sequence[EventView]) -> None:
        unknown = {e.project_id for e in events if e.project_id not in self._owners}
        if not unknown:
            return
        if len(self._owners) > 200_000:
            self._owners.clear()
        rows = await self.pool.fetch(
            "SELECT project_id, owner FROM projects WHERE project_id = ANY($1::text[])", list(unknown)
        )
        for row in rows:
            self._owners[row["project_id"]] = row["owner"]  # a project's owner never changes

    def deliver(self, events: Sequence[EventView]) -> None:
        """Hand `events` (the next contiguous part of the log) to the matching subscribers; never awaits."""
        if not events:
            return
        now: float | None = None  # the loop's time, once a direct write needs it
        for event in events:
            owner = self._owners.get(event.project_id)
            subs = self._by_user.get(owner) if owner is not None else None
            if not subs:
                continue
            position, project = event.position, event.project_id
            message: Any = None
            frame: bytes | None = None
            for sub in subs:  # `sub.wants(event)`, inlined: this loop runs once per event and subscriber
                start = sub.start
                if start is None or position <= start or sub.overflowed or sub.reset is not None or sub.closed:
                    continue
                if sub.project_id is not None and sub.project_id != project:
                    continue
                if message is None and sub.live:
                    message = self.render(event)
                    frame = message.get(PREBUILT_FRAME) if isinstance(message, dict) else None
                # the fast path: its owner waits with nothing queued, so this event is the next it would send
                if (
                    sub.parked
                    and frame is not None
                    and position > sub.sent_upto
                    and not sub._items  # noqa: SLF001 - the broker's own subscription
                    and not sub._progress  # noqa: SLF001
                    and write_now(sub.direct, frame)
                ):
                    sub.sent_upto = position
                    if now is None:
                        now = asyncio.get_running_loop().time()
                    sub.last_sent = now
                    continue
                sub.deliver(position, message)
        self.head = events[-1].position
        self._head_print = events[-1].fingerprint
