"""The feed broker's fan-out without a database: who gets which event, bounded buffers, restarts, configuration."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest

import msgspec

from eventlog import cursor
from eventlog.broker import FeedBroker
from eventlog.pages import EventView
from runtime.settings import ConfigError, Settings, load

T0 = datetime(2026, 11, 28, tzinfo=timezone.utc)


EPOCH = uuid.uuid4()


def event(position: int, project: str) -> EventView:
    return EventView(position, cursor.encode(EPOCH, position, position), "extraction.requested", project, "c", position,
                     T0, "pending", msgspec.Raw(b"{}"), 1)


def broker(buffer: int = 1000) -> FeedBroker:
    rendered: list[int] = []

    def render(e: EventView) -> str:
        rendered.append(e.position)
        return f"m{e.position}"

    b = FeedBroker(None, None, render, buffer=buffer)  # type: ignore[arg-type]
    b.head, b.epoch = 10, uuid.uuid4()
    b._owners.update({"a1": "alice", "a2": "alice", "b1": "bob"})
    b.rendered = rendered  # type: ignore[attr-defined]
    return b


def test_events_go_to_the_owners_subscribers_only_after_their_start():
    b = broker()
    alice_all = b.subscribe("alice")
    alice_a2 = b.subscribe("alice", "a2")
    bob = b.subscribe("bob")
    poll = b.subscribe("alice", live=False)
    assert b.subscribers == 3  # long polls are not counted
    b.deliver([event(11, "a1"), event(12, "b1"), event(13, "a2"), event(14, "nobody")])
    assert alice_all.take() == [(11, "m11"), (13, "m13")]
    assert alice_a2.take() == [(13, "m13")]
    assert bob.take() == [(12, "m12")]
    assert poll.pending and poll.take() == []  # woken, nothing buffered
    assert b.head == 14 and b.known == (b.epoch, 14, 14)
    assert b.rendered == [11, 12, 13]  # once per event, not per subscriber; never for nobody's events
    late = b.subscribe("alice")
    assert late.start == 14
    b.deliver([event(15, "a1")])
    assert late.take() == [(15, "m15")] and alice_all.take() == [(15, "m15")]


def test_a_project_claimed_later_reaches_existing_subscribers():
    b = broker()
    sub = b.subscribe("alice")
    b._owners["a3"] = "alice"  # learnt when its first event is read (same transaction as the claim)
    b.deliver([event(11, "a3")])
    assert sub.take() == [(11, "m11")]


def test_a_full_buffer_marks_the_subscriber_overflowed_without_touching_the_others():
    b = broker(buffer=3)
    slow, fast = b.subscribe("alice"), b.subscribe("alice")
    b.deliver([event(11, "a1"), event(12, "a1")])
    assert [p for p, _ in fast.take()] == [11, 12]
    b.deliver([event(13, "a1"), event(14, "a1")])
    assert slow.overflowed and slow.take() == []  # dropped: memory stays bounded
    assert [p for p, _ in fast.take()] == [13, 14]
    b.deliver([event(15, "a1")])
    assert slow.take() == []  # an overflowed subscription gets nothing more
    b.restart(slow)  # during a backlog: start again from the head instead of failing
    assert not slow.overflowed and slow.start == 15
    b.deliver([event(16, "a1")])
    assert slow.take() == [(16, "m16")]


def test_unsubscribe_and_stop():
    b = broker()
    sub = b.subscribe("alice")
    b.unsubscribe(sub)
    b.unsubscribe(sub)  # idempotent
    assert b.subscribers == 0 and not b._by_user
    b.deliver([event(11, "a1")])
    assert sub.take() == []


async def test_wait_returns_at_once_when_something_is_pending_and_after_the_timeout_otherwise():
    b = broker()
    sub = b.subscribe("alice")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await sub.wait(0.05) is False
    assert loop.time() - started >= 0.04
    waiting = asyncio.create_task(sub.wait(5))
    await asyncio.sleep(0)
    b.deliver([event(11, "a1")])
    assert await asyncio.wait_for(waiting, 1) is True
    sub.close()
    assert await sub.wait(5) is True and sub.closed


async def test_subscribers_before_the_database_was_reached_start_at_the_first_head():
    b = broker()
    b.head = None
    sub = b.subscribe("alice")
    assert sub.start is None
    assert not sub.wants(event(5, "a1"))


def test_feed_settings_from_environment():
    def feed(settings: Settings) -> tuple[float, int, float]:
        return settings.ws_ping_interval, settings.feed_buffer, settings.feed_poll_interval

    assert feed(load({})) == (15.0, 1000, 1.0)
    config = load({"CLIPLOG_WS_PING_INTERVAL": "0.5", "CLIPLOG_FEED_BUFFER": "50", "CLIPLOG_FEED_POLL_INTERVAL": "2"})
    assert feed(config) == (0.5, 50, 2.0)
    for bad in ({"CLIPLOG_WS_PING_INTERVAL": "0"}, {"CLIPLOG_FEED_BUFFER": "1.5"}, {"CLIPLOG_WS_PING_INTERVAL": "nan"},
                {"CLIPLOG_FEED_POLL_INTERVAL": "-1"}, {"CLIPLOG_FEED_BUFFER": "lots"}):
        with pytest.raises(ConfigError):
            load(bad)


async def test_a_subscription_stuck_in_a_send_for_the_send_timeout_is_stalled():
    b = broker()
    b.idle_after, b.send_timeout = 100.0, 0.05
    stuck, idle = b.subscribe("alice"), b.subscribe("bob")
    called = asyncio.Event()
    stuck.on_stall = called.set
    idle.on_stall = lambda: pytest.fail("a subscription that is not sending is never stalled")
    stuck.sending_since = asyncio.get_running_loop().time()
    tick = asyncio.create_task(b._tick())
    try:
        await asyncio.wait_for(called.wait(), 5)
    finally:
        tick.cancel()
    assert stuck.stalled and stuck.sending_since == 0.0
    assert not idle.stalled


def test_the_send_timeout_from_environment():
    assert load({}).ws_send_timeout == 10.0
    assert load({"CLIPLOG_WS_SEND_TIMEOUT": "2.5"}).ws_send_timeout == 2.5
    with pytest.raises(ConfigError):
        load({"CLIPLOG_WS_SEND_TIMEOUT": "0"})


def progress(project: str, clip: str = "c", percent: float = 10.0):  # noqa: ANN201 - ProgressMessage
    from eventlog.progress import ProgressMessage

    return ProgressMessage(project_id=project, clip_id=clip, run=1, attempt=1, percent=percent, eta_seconds=None)


def test_progress_goes_to_live_subscribers_who_may_see_the_project_latest_per_clip():
    b = broker()
    alice_all = b.subscribe("alice")
    alice_a2 = b.subscribe("alice", "a2")
    bob = b.subscribe("bob")
    poll = b.subscribe("alice", live=False)
    for percent in (10.0, 20.0, 30.0):
        b.deliver_progress("alice", progress("a1", percent=percent))
    b.deliver_progress("alice", progress("a1", clip="d", percent=5.0))
    sent = [msgspec.json.decode(m["text"]) for m in alice_all.take_progress()]
    assert [(m["clip_id"], m["percent"]) for m in sent] == [("c", 30.0), ("d", 5.0)]  # only the latest per clip
    assert all("cursor" not in m and "position" not in m for m in sent)
    assert alice_all.take() == []  # never in the event buffer
    assert alice_a2.take_progress() == [] and bob.take_progress() == [] and poll.take_progress() == []
    assert not poll.pending  # a long poll is not woken by progress


def test_a_subscriber_behind_on_events_gets_no_progress_and_is_never_pushed_to_overflow():
    b = broker(buffer=4)
    slow = b.subscribe("alice")
    b.deliver([event(11, "a1"), event(12, "a1")])  # half its buffer
    for percent in range(100):
        b.deliver_progress("alice", progress("a1", clip=f"c{percent}", percent=float(percent)))
    assert slow.take_progress() == []
    assert not slow.overflowed and [p for p, _ in slow.take()] == [11, 12]
    b.deliver_progress("alice", progress("a1"))  # caught up again: progress flows
    assert len(slow.take_progress()) == 1


def test_progress_of_at_most_progress_limit_clips_is_held():
    from eventlog.broker import PROGRESS_LIMIT

    b = broker()
    sub = b.subscribe("alice")
    for n in range(PROGRESS_LIMIT + 10):
        b.deliver_progress("alice", progress("a1", clip=f"c{n}"))
    b.deliver_progress("alice", progress("a1", clip="c0", percent=99.0))  # a clip it holds is still updated
    held = [msgspec.json.decode(m["text"]) for m in sub.take_progress()]
    assert len(held) == PROGRESS_LIMIT and held[0]["percent"] == 99.0


# The fast path: frames written straight to a waiting subscriber's connection ---------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeConnection:
    """The attributes of uvicorn's sans-I/O WebSocket protocol that `runtime.websocket.write_now` reads."""

    def __init__(self) -> None:
        from websockets.protocol import State

        self.handshake_complete, self.close_sent, self.initial_response, self.disconnected = True, False, None, False
        self.writable = asyncio.Event()
        self.writable.set()
        self.conn = type("Conn", (), {"state": State.OPEN})()
        self.transport = FakeTransport()


def framing_broker() -> FeedBroker:
    from eventlog.broker import PREBUILT_FRAME
    from runtime.websocket import text_frame

    def render(e: EventView) -> dict:
        text = f"m{e.position}"
        return {"type": "websocket.send", "text": text, PREBUILT_FRAME: text_frame(text.encode())}

    b = FeedBroker(None, None, render)  # type: ignore[arg-type]
    b.head, b.epoch = 10, uuid.uuid4()
    b._owners.update({"a1": "alice"})
    return b


def frames(*positions: int) -> list[bytes]:
    from runtime.websocket import text_frame

    return [text_frame(f"m{p}".encode()) for p in positions]


async def test_a_waiting_subscriber_gets_each_frame_written_to_its_connection_without_being_woken():
    b = framing_broker()
    sub, connection = b.subscribe("alice"), FakeConnection()
    sub.direct, sub.sent_upto = connection, 10
    waiter = sub.waiter()
    assert waiter is not None
    sub.parked = True  # as the handler does around `await waiter`
    b.deliver([event(11, "a1"), event(12, "a1")])
    assert connection.transport.written == frames(11, 12)
    assert sub.sent_upto == 12 and sub.take() == [] and not waiter.done()
    assert 0 < sub.last_sent <= asyncio.get_running_loop().time()


async def test_past_the_high_water_mark_events_queue_in_order_and_wake_the_handler():
    b = framing_broker()
    sub, connection = b.subscribe("alice"), FakeConnection()
    sub.direct, sub.sent_upto, sub.parked = connection, 10, True
    waiter = sub.waiter()
    b.deliver([event(11, "a1")])
    connection.writable.clear()  # uvicorn's pause_writing: the handler's send must wait (and may be stalled)
    b.deliver([event(12, "a1")])
    connection.writable.set()
    b.deliver([event(13, "a1")])  # writable again, but 12 waits in the queue: 13 must follow it, not pass it
    assert connection.transport.written == frames(11)
    assert waiter.done() and sub.sent_upto == 11
    assert [p for p, _ in sub.take()] == [12, 13]


@pytest.mark.parametrize(
    "state", ["close_sent", "disconnected", "closing", "not_open", "not_parked", "old", "no_protocol", "other_protocol"]
)
async def test_nothing_is_written_directly_unless_uvicorn_would_write_it_at_once(state: str):
    from websockets.protocol import State

    b = framing_broker()
    sub, connection = b.subscribe("alice"), FakeConnection()
    sub.direct, sub.sent_upto, sub.parked = connection, 10, True
    if state == "close_sent":
        connection.close_sent = True
    elif state == "disconnected":
        connection.disconnected = True
    elif state == "closing":
        connection.transport.closing = True
    elif state == "not_open":
        connection.conn.state = State.CLOSING
    elif state == "not_parked":
        sub.parked = False
    elif state == "no_protocol":  # another server, or uvicorn's wsproto / legacy websockets implementation
        sub.direct = None
    elif state == "other_protocol":  # a uvicorn whose protocol lacks what write_now reads
        sub.direct = object()
    else:
        sub.sent_upto = 11  # the handler has sent 11 already (its backlog)
    b.deliver([event(11, "a1")])
    assert connection.transport.written == []
    assert [p for p, _ in sub.take()] == [11]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_prebuilt_frame_is_what_websockets_would_send(size: int):
    from websockets.frames import Frame, Opcode

    from runtime.websocket import text_frame

    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
