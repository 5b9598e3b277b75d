"""The event feed's contract (API.md "The event feed", "Authentication"; additions in docs/feed.md) against the real
app under uvicorn in this process (`api_server`) and real PostgreSQL: paging and cursors, long poll, the
WebSocket's close codes and pings, isolation between users, cursors from another log, slow consumers, the
listener surviving a lost connection, a log replaced under live subscribers, and the subscriber metric."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Awaitable, Callable

import socket

import asyncpg
import httpx
import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from eventlog import cursor, store
from tests.feed_support import (
    burst,
    close_code,
    cursor_at,
    expected_positions,
    open_socket,
    receive_events,
    register,
    until_caught_up,
    until_parked,
    ws_url,
)
from tests.inprocess import InProcessServer

MakeUser = Callable[[], Awaitable[tuple[str, str]]]


def client(server: InProcessServer, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=40)


@pytest.fixture
def fast_pings(api_server: InProcessServer):
    """Pings after 0.3 s of silence on the shared server, for the duration of a test."""
    broker = api_server.state.feed
    before, broker.idle_after = broker.idle_after, 0.3
    yield
    broker.idle_after = before


# GET /api/events -------------------------------------------------------------------------------------------------


async def test_pages_follow_the_cursor_and_next_cursor_resumes(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    async with client(api_server, token) as http:
        # nothing yet: an empty page whose next_cursor (position 0 of this log) is a valid cursor
        first = (await http.get("/api/events")).json()
        assert first["events"] == []
        assert cursor.decode(first["next_cursor"]).position == 0
        assert (await http.get("/api/events", params={"after": first["next_cursor"]})).json()["events"] == []

        project = ids.project()
        positions = [await register(pool, project, user) for _ in range(7)]
        seen: list[int] = []
        after = first["next_cursor"]
        while True:
            page = (await http.get("/api/events", params={"after": after, "limit": 3})).json()
            assert len(page["events"]) <= 3
            seen += [e["position"] for e in page["events"]]
            if not page["events"]:
                assert page["next_cursor"] == after  # no events: the cursor given
                break
            assert page["next_cursor"] == page["events"][-1]["cursor"]
            after = page["next_cursor"]
        assert seen == positions
        # without `after`: from the beginning; default limit 100
        assert [e["position"] for e in (await http.get("/api/events")).json()["events"]] == positions
        # the event shape of API.md
        event = (await http.get("/api/events", params={"limit": 1})).json()["events"][0]
        assert set(event) >= {"position", "cursor", "type", "project_id", "clip_id", "version", "recorded_at",
                              "clip_status", "data"}
        assert (event["type"], event["project_id"], event["clip_status"]) == (
            "extraction.requested", project, "pending"
        )
        assert {"run", "attempt", "reason", "not_before", "source", "start", "end", "mode"} <= set(event["data"])


async def test_latest_starts_at_the_head(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    project = ids.project()
    await register(pool, project, user)
    async with client(api_server, token) as http:
        page = (await http.get("/api/events", params={"after": "latest"})).json()
        assert page["events"] == []
        head = cursor.decode(page["next_cursor"]).position
        assert head >= await pool.fetchval("SELECT max(position) FROM events WHERE project_id = $1", project)
        later = await register(pool, project, user)
        page = (await http.get("/api/events", params={"after": page["next_cursor"]})).json()
        assert [e["position"] for e in page["events"]] == [later]


async def test_project_filter(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    a, b = ids.project(), ids.project()
    for project in (a, b, a, b, a):
        await register(pool, project, user)
    async with client(api_server, token) as http:
        page = (await http.get("/api/events", params={"project_id": a})).json()
        assert [e["project_id"] for e in page["events"]] == [a, a, a]
        assert [e["position"] for e in page["events"]] == await expected_positions(pool, user, project=a)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"}, {"limit": "1001"}, {"limit": "-5"}, {"limit": "x"}, {"limit": "1.5"},
        {"wait": "-1"}, {"wait": "30.5"}, {"wait": "nan"}, {"wait": "inf"}, {"wait": "soon"},
        {"after": "not a cursor"}, {"after": "AAAA"}, {"after": "A" * 400},
        {"project_id": "bad id!"}, {"project_id": "x" * 65},
    ],
)
async def test_bad_input_is_400_json(api_server, make_user: MakeUser, params):
    _, token = await make_user()
    async with client(api_server, token) as http:
        response = await http.get("/api/events", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == 400 and body["detail"]


async def test_limit_bounds_are_accepted(api_server, make_user: MakeUser):
    _, token = await make_user()
    async with client(api_server, token) as http:
        for params in ({"limit": "1"}, {"limit": "1000"}, {"wait": "0"}, {"wait": "0.05"}):
            assert (await http.get("/api/events", params=params)).status_code == 200, params


async def test_long_poll_answers_when_an_event_arrives(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    project = ids.project()
    async with client(api_server, token) as http:
        head = (await http.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
        started = time.monotonic()
        polling = asyncio.create_task(http.get("/api/events", params={"after": head, "wait": "20"}))
        await until_parked(api_server, user)  # its first read found nothing: only the broker can answer it now
        assert not polling.done()
        position = await register(pool, project, user)
        page = (await polling).json()
        elapsed = time.monotonic() - started
        assert [e["position"] for e in page["events"]] == [position]
        assert elapsed < 3, elapsed
        # nothing arrives: the answer is held for `wait`, then empty, with the cursor given
        started = time.monotonic()
        page = (await http.get("/api/events", params={"after": page["next_cursor"], "wait": "0.6"})).json()
        assert page["events"] == [] and page["next_cursor"] == cursor.encode(
            await store.epoch(pool), position, cursor.decode(page["next_cursor"]).fingerprint
        )
        assert 0.55 <= time.monotonic() - started < 3


async def test_long_poll_ignores_other_users_events(api_server, pool, ids, make_user: MakeUser):
    alice, alice_token = await make_user()
    bob, _ = await make_user()
    async with client(api_server, alice_token) as http:
        head = (await http.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
        polling = asyncio.create_task(http.get("/api/events", params={"after": head, "wait": "20"}))
        await until_parked(api_server, alice)
        bobs = await register(pool, ids.project(), bob)
        # then one of alice's: the poll answers with it, and its read (after `head`) covers bob's event too
        alices = await register(pool, ids.project(), alice)
        page = (await polling).json()
    assert bobs < alices
    assert [e["position"] for e in page["events"]] == [alices]


# Authentication and isolation ---------------------------------------------------------------------------------


async def test_bad_token_is_401_and_4401(api_server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        async with httpx.AsyncClient(base_url=api_server.url, headers=headers) as http:
            response = await http.get("/api/events")
        assert response.status_code == 401 and response.json()["status_code"] == 401
    for url, kwargs in (
        (ws_url(api_server.ws_url), {}),
        (ws_url(api_server.ws_url, token="nope"), {}),
        (ws_url(api_server.ws_url), {"additional_headers": {"Authorization": "Bearer nope"}}),
    ):
        messages, code, reason = await close_code(url, **kwargs)
        assert (messages, code) == ([], 4401), reason


async def test_the_socket_accepts_the_token_by_header_or_query(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    project = ids.project()
    position = await register(pool, project, user)
    for url, kwargs in (
        (ws_url(api_server.ws_url, token=token, project_id=project), {}),
        (ws_url(api_server.ws_url, project_id=project), {"additional_headers": {"Authorization": f"Bearer {token}"}}),
    ):
        async with await open_socket(url, **kwargs) as ws:
            assert [e["position"] for e in await receive_events(ws, position)] == [position]


async def test_a_user_never_sees_another_users_events(api_server, pool, ids, make_user: MakeUser):
    alice, alice_token = await make_user()
    bob, bob_token = await make_user()
    alices, bobs = ids.project(), ids.project()
    await register(pool, alices, alice)
    await register(pool, bobs, bob)
    async with client(api_server, bob_token) as http:
        # naming alice's project: 404, the same answer as for a project that does not exist
        for project in (alices, ids.project()):
            response = await http.get("/api/events", params={"project_id": project})
            assert response.status_code == 404 and response.json()["detail"] == f"project {project!r} not found"
            messages, code, _ = await close_code(ws_url(api_server.ws_url, token=bob_token, project_id=project))
            assert (messages, code) == ([], 4404)
        # following everything: bob's socket and polls get bob's events only, while alice keeps appending
        async with await open_socket(ws_url(api_server.ws_url, token=bob_token)) as ws:
            for _ in range(3):
                await register(pool, alices, alice)
            last = await register(pool, bobs, bob)
            received = await receive_events(ws, last)
        polled = (await http.get("/api/events", params={"limit": 1000})).json()["events"]
    expected = await expected_positions(pool, bob)
    assert [e["position"] for e in received] == expected
    assert [e["position"] for e in polled] == expected
    assert {e["project_id"] for e in received + polled} == {bobs}


async def test_a_project_claimed_after_subscribing_is_followed(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    async with await open_socket(ws_url(api_server.ws_url, token=token, after="latest")) as ws:
        assert await until_caught_up(ws) == []  # subscribed (live) before the project exists
        new_project = ids.project()
        position = await register(pool, new_project, user)
        events = await receive_events(ws, position)
    assert [(e["project_id"], e["position"]) for e in events] == [(new_project, position)]


# Cursors from another log ----------------------------------------------------------------------------------------


async def test_a_cursor_from_another_log_is_410_and_reset_4410(api_server, pool, ids, make_user, make_database):
    user, token = await make_user()
    project = ids.project()
    position = await register(pool, project, user)
    ours = cursor.decode(await cursor_at(pool, position))
    # a genuine cursor of another database's log (say, the one this was restored from)
    async with asyncpg.create_pool(await make_database(migrated=True), min_size=1, max_size=2,
                                   init=store.init_connection) as other:
        elsewhere = await cursor_at(other, await register(other, project, user))
    epoch = await store.epoch(pool)
    bad = {
        "minted by another database": elsewhere,
        "hand-crafted with another epoch": cursor.encode(uuid.uuid4(), position, ours.fingerprint),
        "position 0 of another log": cursor.encode(uuid.uuid4(), 0, 0),
        "an event this log does not hold": cursor.encode(epoch, position + 10**9, 1),
        "another event at that position": cursor.encode(epoch, position, ours.fingerprint ^ 1),
    }
    async with client(api_server, token) as http:
        for why, after in bad.items():
            response = await http.get("/api/events", params={"after": after})
            assert response.status_code == 410, (why, response.text)
            assert response.json()["status_code"] == 410 and response.json()["detail"]
            messages, code, _ = await close_code(ws_url(api_server.ws_url, token=token, after=after))
            assert code == 4410, why
            assert len(messages) == 1 and messages[0]["type"] == "reset" and messages[0]["detail"], why


# The WebSocket -------------------------------------------------------------------------------------------------


async def test_backlog_then_live_in_order_without_gap_or_duplicate(api_server, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    project = ids.project()
    before = [await register(pool, project, user) for _ in range(30)]
    start = await cursor_at(pool, before[4])
    async with await open_socket(ws_url(api_server.ws_url, token=token, after=start)) as ws:

        async def keep_writing() -> list[int]:
            return [await register(pool, project, user, hold=0.002 * (i % 3)) for i in range(30)]

        writer = asyncio.create_task(keep_writing())
        first = json.loads(await ws.recv())  # backlog starts right away
        assert first["type"] == "event" and first["event"]["position"] == before[5]
        during = await writer
        events = [first["event"]] + await receive_events(ws, during[-1])
    assert [e["position"] for e in events] == before[5:] + during


async def test_pings_after_silence(api_server, make_user: MakeUser, fast_pings):
    _, token = await make_user()
    async with await open_socket(ws_url(api_server.ws_url, token=token, after="latest")) as ws:
        caught_up = json.loads(await ws.recv())  # no backlog after `latest`: caught up at once, then silence
        assert caught_up["type"] == "caught_up" and caught_up["cursor"]
        started = time.monotonic()
        for _ in range(3):
            async with asyncio.timeout(5):
                assert json.loads(await ws.recv()) == {"type": "ping"}
        assert time.monotonic() - started >= 0.8


async def test_subscriber_metric(api_server, make_user: MakeUser):
    _, token = await make_user()

    async def subscribers() -> int:
        async with httpx.AsyncClient(base_url=api_server.url) as http:
            text = (await http.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("cliplog_feed_subscribers "))
        return int(float(line.split()[1]))

    async def until(predicate: Callable[[int], bool]) -> int:
        async with asyncio.timeout(10):
            while not predicate(value := await subscribers()):
                await asyncio.sleep(0.05)
        return value

    base = await until(lambda _: True)
    sockets = [await open_socket(ws_url(api_server.ws_url, token=token, after="latest")) for _ in range(3)]
    await until(lambda n: n == base + 3)
    for ws in sockets:
        await ws.close()
    await until(lambda n: n == base)


# Slow consumers ------------------------------------------------------------------------------------------------


async def events_until_closed(ws) -> tuple[list[dict], object]:  # noqa: ANN001
    """The events `ws` gets until the server closes it, and the close frame it sent."""
    got: list[dict] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(20):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "event":
                    got.append(message["event"])
    assert closed.value.rcvd is not None, closed.value
    return got, closed.value.rcvd



async def test_a_slow_consumer_is_closed_4408_and_resumes_without_delaying_others(
    database_url, api_env, pool, ids, make_user: MakeUser
):
    """A client that stops reading fills the (small) socket buffers and the server's send blocks; its subscription's
    bounded buffer overflows and it is closed with 4408, while a reading client gets every event. The slow one then
    resumes from its last cursor and gets the rest exactly once."""
    server = InProcessServer(api_env(database_url), send_buffer=4096).start()
    try:
        server.state.feed.buffer = 100
        user, token = await make_user()
        project = ids.project()
        start = await cursor_at(pool, await register(pool, project, user))
        url = ws_url(server.ws_url, token=token, after=start)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small receive window
        raw.connect(("127.0.0.1", server.port))
        slow = await open_socket(url, max_queue=1, sock=raw)  # reads nothing until told
        fast = await open_socket(url)
        written: list[int] = []
        for _ in range(30):
            written += await burst(pool, project, user, 20)
            await asyncio.sleep(0.005)
        received = await receive_events(fast, written[-1], timeout=20)
        assert [e["position"] for e in received] == written, "the reading client got everything, in order"
        # the slow client now reads what the network held for it, then the close
        got, close = await events_until_closed(slow)
        assert close.code == 4408, close
        assert 0 < len(got) < len(written)
        assert [e["position"] for e in got] == written[: len(got)]
        # it resumes from the last cursor it has
        async with await open_socket(ws_url(server.ws_url, token=token, after=got[-1]["cursor"])) as again:
            rest = await receive_events(again, written[-1], timeout=20)
        assert [e["position"] for e in got + rest] == written
        await fast.close()
    finally:
        server.stop()


async def test_a_send_stuck_for_the_send_timeout_closes_the_socket_4408(database_url, api_env, pool, ids, make_user):
    """A client stops reading; the buffer (large here) does not overflow, but the server's send blocks. After
    CLIPLOG_WS_SEND_TIMEOUT the broker stalls the subscription and the handler closes the socket with 4408: a client
    that reads again in time gets what the network held, then the close; it resumes from its last cursor."""
    env = api_env(database_url, CLIPLOG_WS_SEND_TIMEOUT="2", CLIPLOG_WS_PING_INTERVAL="60", CLIPLOG_FEED_BUFFER="100000")
    server = InProcessServer(env, send_buffer=4096).start()
    try:
        user, token = await make_user()
        project = ids.project()
        start = await cursor_at(pool, await register(pool, project, user))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        slow = await open_socket(ws_url(server.ws_url, token=token, after=start), max_queue=1, sock=raw)
        written: list[int] = []
        for _ in range(30):
            written += await burst(pool, project, user, 20)

        async def stalled() -> bool:
            return any(sub.stalled for sub in server.state.feed._all())

        async with asyncio.timeout(20):
            while not await server.acall(stalled):
                await asyncio.sleep(0.02)
        got, close = await events_until_closed(slow)
        assert close.code == 4408, close
        assert "not reading" in close.reason
        assert 0 < len(got) < len(written) and [e["position"] for e in got] == written[: len(got)]
        async with await open_socket(ws_url(server.ws_url, token=token, after=got[-1]["cursor"])) as again:
            rest = await receive_events(again, written[-1], timeout=20)
        assert [e["position"] for e in got + rest] == written
    finally:
        server.stop()


# The broker's connection to PostgreSQL ------------------------------------------------------------------------


async def test_the_listener_reconnects_and_notify_still_wakes_the_feed(
    database_url, api_env, pool, ids, make_user: MakeUser
):
    server = InProcessServer(api_env(database_url)).start()
    try:
        broker = server.state.feed

        def listener_pid() -> int | None:
            conn = broker._listener  # noqa: SLF001
            return conn.get_server_pid() if conn is not None and broker.listening else None

        async with asyncio.timeout(10):
            while listener_pid() is None:
                await asyncio.sleep(0.02)
        before = listener_pid()
        broker.poll_interval = 60  # from now on only NOTIFY (or the reconnection) wakes the broker
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", before)
        async with asyncio.timeout(10):
            while listener_pid() in (None, before):
                await asyncio.sleep(0.05)
        user, token = await make_user()
        project = ids.project()
        async with await open_socket(ws_url(server.ws_url, token=token, after="latest")) as ws:
            await until_caught_up(ws)
            started = time.monotonic()
            position = await register(pool, project, user)
            assert [e["position"] for e in await receive_events(ws, position, timeout=10)] == [position]
            assert time.monotonic() - started < 2, "woken by NOTIFY on the new connection, not by the poll"
    finally:
        server.stop()


async def test_live_subscribers_are_reset_when_the_log_is_replaced(api_env, make_database, ids):
    """The database behind a running API is replaced (here: a new epoch, as a restore into a fresh database would
    give): live sockets get `reset` and 4410, a waiting long poll 410, and new cursors work on the new log."""
    url = await make_database(migrated=True)
    db = await asyncpg.create_pool(url, min_size=1, max_size=4, init=store.init_connection)
    server = InProcessServer(api_env(url)).start()
    try:
        from api.auth import create_token

        token = await create_token(db, "replaced")
        await register(db, ids.project(), "replaced")
        async with await open_socket(ws_url(server.ws_url, token=token)) as ws, client(server, token) as http:
            await receive_events(ws, 1)
            head = (await http.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
            polling = asyncio.create_task(http.get("/api/events", params={"after": head, "wait": "20"}))
            await until_parked(server, "replaced")  # the reset, not its first read, must end it
            await db.execute("UPDATE log_identity SET epoch = gen_random_uuid()")
            messages: list[dict] = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        messages.append(json.loads(await ws.recv()))
            assert closed.value.rcvd.code == 4410
            # (caught_up comes before or after the first event, depending on whether it was backlog or live)
            assert [m["type"] for m in messages if m["type"] not in ("ping", "caught_up")] == ["reset"]
            response = await polling
            assert response.status_code == 410
            fresh = (await http.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
            assert (await http.get("/api/events", params={"after": fresh})).status_code == 200
    finally:
        server.stop()
        await db.close()


async def test_the_feed_mints_the_cursors_eventlog_cursor_checks(connect):
    """The feed hashes a fingerprint text PostgreSQL formats, and encodes cursors inline; both must agree with
    `eventlog.cursor` exactly (whole seconds, microseconds, the session's time zone), or every cursor would 410."""
    from datetime import datetime, timedelta, timezone

    from eventlog.pages import _COLUMNS, _JSON_PAGE_SQL, _built_events, _events

    conn = await connect()
    await conn.execute("SET TIME ZONE 'America/New_York'")
    # a temporary `events` of this connection only, with the log's columns: each time written twice, once by the
    # appends' INSERT (the feed's JSON written with the row, here in another time zone than UTC) and once without
    # it (the feed builds it at read time, as for events written before migration 018)
    await conn.execute("CREATE TEMP TABLE events (LIKE public.events INCLUDING DEFAULTS)")
    base = datetime(2026, 11, 28, 23, 59, 59, tzinfo=timezone.utc)
    stamps = [base, base + timedelta(microseconds=1), base + timedelta(microseconds=999_999),
              base + timedelta(microseconds=120_000), datetime(999, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
              datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5)))]
    columns = "position, txid, stream, type, project_id, clip_id, version, recorded_at, clip_status, data, schema_version"
    selected = (
        "SELECT $1::bigint AS position, pg_current_xact_id() AS txid, $2::text AS stream, "
        "'extraction.requested'::text AS type, 'p'::text AS project_id, 'c'::text AS clip_id, $3::int AS version, "
        "$4::timestamptz AS recorded_at, 'pending'::text AS clip_status, "
        "'{\"a\": 1, \"é\": \"\\u2028\"}'::jsonb AS data, 1::smallint AS schema_version"
    )
    for position, at in enumerate(stamps, start=1):
        await conn.execute(store.insert_sql(selected), position, f"p/c{position}", position * 7, at)
        await conn.execute(
            f"INSERT INTO events ({columns}) SELECT * FROM ({selected}) AS e", position + 100, f"p/c{position}", 1, at
        )
    assert await conn.fetchval("SELECT count(feed_tail) FROM events") == len(stamps)  # the first of each pair
    # and each time a third time, with its fingerprint too (as the appends write since 019): the feed builds the
    # page, cursors included, in PostgreSQL
    fingerprinted = store.insert_sql(f"{selected}, $5::integer AS f", fingerprint="e.f")
    for position, at in enumerate(stamps, start=201):
        stream = f"p/c{position}"
        await conn.execute(fingerprinted, position, stream, 3, at, cursor.stored_fingerprint(stream, 3, at))
    assert await conn.fetchval("SELECT count(feed_fingerprint) FROM events") == len(stamps)
    epoch = uuid.uuid4()
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events ORDER BY position")
    stored = await conn.fetch("SELECT stream, version, recorded_at FROM events ORDER BY position")
    for event, row in zip(_events(rows, epoch), stored, strict=True):
        print_ = cursor.fingerprint(row["stream"], row["version"], row["recorded_at"])
        expected = cursor.encode(epoch, event.position, print_)
        assert event.cursor == expected, row["recorded_at"]
        assert json.loads(bytes(event.data)) == {"a": 1, "é": "\u2028"}
    # and the feed's JSON of each row is what msgspec writes for the event (the times' text above all)
    # and the feed's JSON of each row is what msgspec writes for the event (the times' text above all), its cursor
    # built by PostgreSQL where the row holds its fingerprint, else minted by Python, in one page
    page = await conn.fetch(_JSON_PAGE_SQL[(True, True)], 0, 1000, "p", 1000, cursor.epoch_prefix(epoch))
    assert [r["feed_fingerprint"] is not None for r in page] == [r["position"] > 200 for r in page]
    built = _built_events(page, epoch, b"\n")
    views = _events(rows, epoch)
    assert built.body.split(b"\n") == [msgspec.json.encode(e) for e in views]
    assert (built.count, built.last_position, built.last_cursor) == (len(views), views[-1].position, views[-1].cursor)
    page = await conn.fetch(_JSON_PAGE_SQL[(True, True)], 0, 1000, "p", 200, cursor.epoch_prefix(epoch))
    assert _built_events(page, epoch, b"\n").last_cursor == [v.cursor for v in views if v.position <= 200][-1]


async def test_postgresql_builds_the_cursors_eventlog_cursor_encodes(connect):
    """`eventlog.cursor.sql` (the catch-up's cursors, built by PostgreSQL from the stored fingerprint) gives exactly
    `cursor.encode`'s text: positions from 0 to 2**63 - 1, fingerprints from 0 to 2**32 - 1 (those from 2**31 on
    stored as negative integers), any epoch."""
    import random

    rng = random.Random(20261201)
    epochs = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), *(uuid.uuid4() for _ in range(3))]
    positions = [0, 1, 62, 63, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1]
    prints = [0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1, 0xDEADBEEF]
    cases = [(e, p, f) for e in epochs[:2] for p in positions for f in prints]
    cases += [(rng.choice(epochs), rng.randrange(2**63), rng.randrange(2**32)) for _ in range(2000)]
    stored = [f - 2**32 if f >= 2**31 else f for _, _, f in cases]
    conn = await connect()
    built = await conn.fetch(
        f"SELECT {cursor.sql('e', 'p', 'f')} FROM unnest($1::bytea[], $2::bigint[], $3::integer[]) WITH ORDINALITY "
        "AS t(e, p, f, i) ORDER BY i",
        [cursor.epoch_prefix(e) for e, _, _ in cases], [p for _, p, _ in cases], stored,
    )
    assert [r[0] for r in built] == [cursor.encode(e, p, f) for e, p, f in cases]
    assert all(cursor.decode(r[0]) == cursor.Cursor(cursor.epoch_prefix(e), p, f) for r, (e, p, f) in zip(built, cases))
    assert await conn.fetchval(f"SELECT {cursor.sql('$1::bytea', '1', 'NULL')}", b"12345678") is None


def test_cursor_is_opaque_base64url():
    text = cursor.encode(uuid.uuid4(), 1234, 99)
    assert "=" not in text and "+" not in text and "/" not in text
    base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
