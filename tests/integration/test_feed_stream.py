"""`GET /api/events` built by PostgreSQL: a page's bytes are exactly what msgspec writes for the `EventView`s the
WebSocket backlog reads (`eventlog.pages.read_page`), and the NDJSON stream (`Accept: application/x-ndjson`) gives
the same events, byte for byte, as the pages, from any cursor, for one project or all, and when there is nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable

import asyncpg
import httpx
import msgspec
import pytest

from api import feed
from api.feed import page_json
from api.feed_client import CursorReset, FeedClient
from api.views import EventPage
from eventlog import cursor, pages, store
from tests.feed_support import cursor_at
from tests.inprocess import InProcessServer

MakeUser = Callable[[], Awaitable[tuple[str, str]]]
NDJSON = {"Accept": "application/x-ndjson"}

# Timestamps with and without microseconds (msgspec leaves out a zero fraction), and data that needs escaping.
T0 = datetime(2026, 11, 30, 23, 59, 59, tzinfo=timezone.utc)
STAMPS = [T0, T0 + timedelta(microseconds=5), T0 + timedelta(microseconds=120000), T0 + timedelta(seconds=1)]
DATA = ['{"run": 1, "attempt": 1, "source": "caf\u00e9 \\"quoted\\"\\n\\u0001 \U0001f3ac"}', "{}", '{"n": [1, 2.5, null]}']


async def insert_events(pool: asyncpg.Pool, project: str, user: str, count: int) -> list[int]:
    """`count` events of `project` (owned by `user`) in one transaction, at positions the log allocates: every
    other one written as the appends write (with its feed JSON), the others without it (as before migration 018:
    the feed builds their JSON at read time)."""
    selected = (
        "SELECT $1::bigint AS position, $2::xid8 AS txid, $3 || '/' || $4 AS stream, $3::text AS project_id, "
        "$4::text AS clip_id, 1 AS version, 'extraction.requested'::text AS type, 1::smallint AS schema_version, "
        "$5::text::jsonb AS data, 'pending'::text AS clip_status, $6::timestamptz AS recorded_at"
    )
    without_json = f"INSERT INTO events ({store.INSERTED}) {selected}"
    rows = [(i, f"c{i}", DATA[i % len(DATA)], STAMPS[i % len(STAMPS)]) for i in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        txid, first = await conn.fetchrow("SELECT txid, first_position FROM cliplog_allocate_positions($1)", count)
        await conn.execute("INSERT INTO projects (project_id, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING", project, user)
        for statement, parity in ((store.insert_sql(selected), 0), (without_json, 1)):
            await conn.executemany(
                statement,
                [(first + i, txid, project, clip, data, at) for i, clip, data, at in rows if i % 2 == parity],
            )
    return list(range(first, first + count))


class RawPage(msgspec.Struct):
    events: list[msgspec.Raw]
    next_cursor: str


async def paged(http: httpx.AsyncClient, after: str | None, project: str | None, limit: int) -> list[bytes]:
    """Every event after `after` through pages of `limit`, each event's bytes as the page holds them."""
    events: list[bytes] = []
    while True:
        params = {"limit": str(limit), **({"after": after} if after else {}), **({"project_id": project} if project else {})}
        response = await http.get("/api/events", params=params)
        assert response.status_code == 200, response.text
        page = msgspec.json.decode(response.content, type=RawPage)
        if not page.events:
            return events
        events += [bytes(e) for e in page.events]
        after = page.next_cursor


async def streamed(http: httpx.AsyncClient, after: str | None, project: str | None) -> list[bytes]:
    params = {**({"after": after} if after else {}), **({"project_id": project} if project else {})}
    response = await http.get("/api/events", params=params, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = response.content
    assert body == b"" or body.endswith(b"\n")
    return body.splitlines()


async def test_a_page_built_by_postgresql_is_what_msgspec_writes_for_the_events(pool, ids, make_user: MakeUser):
    user, _ = await make_user()
    project = ids.project()
    positions = await insert_events(pool, project, user, 12)
    epoch = await pool.fetchval("SELECT epoch FROM log_identity")
    encode = msgspec.json.encode
    for after in (positions[0] - 1, positions[3], positions[-1]):
        for project_id, upto in ((None, None), (project, None), (project, positions[-2]), (None, positions[-2])):
            views = await pages.read_page(pool, epoch, after, 5, user=user, project_id=project_id, upto=upto)
            built = await pages.read_page_json(pool, epoch, after, 5, user=user, project_id=project_id, upto=upto)
            assert [encode(v) for v in views] == [e.encode() for e in built.events]
            assert built.last_cursor == (views[-1].cursor if views else None)
            given = cursor.encode(epoch, after, 0)
            expected = encode(EventPage(events=views, next_cursor=views[-1].cursor if views else given))
            assert page_json(built, given) == expected
    assert len(views) == 0  # the last cursor: nothing after it


async def test_an_event_changed_in_place_is_sent_as_it_is_now(pool, ids, make_user: MakeUser):
    """The log is append-only, but a row repaired (or damaged) in place must not keep the feed's stored text of what
    it was: the page says what the row holds now, as the WebSocket's read does. A backfill of the stored text alone
    keeps what it writes."""
    user, _ = await make_user()
    project = ids.project()
    first = (await insert_events(pool, project, user, 2))[0]  # the first one with its feed JSON
    epoch = await pool.fetchval("SELECT epoch FROM log_identity")
    assert await pool.fetchval("SELECT feed_tail IS NOT NULL FROM events WHERE position = $1", first)
    await pool.execute(
        "UPDATE events SET clip_status = 'completed', data = '{\"repaired\": true}' WHERE position = $1", first
    )
    views = await pages.read_page(pool, epoch, first - 1, 1, user=user, project_id=project)
    built = await pages.read_page_json(pool, epoch, first - 1, 1, user=user, project_id=project)
    assert [msgspec.json.encode(v) for v in views] == [e.encode() for e in built.events]
    assert msgspec.json.decode(built.events[0])["clip_status"] == "completed"
    await pool.execute("UPDATE events SET feed_tail = 'backfilled', feed_print = 'p' WHERE position = $1", first)
    assert await pool.fetchval("SELECT feed_tail FROM events WHERE position = $1", first) == "backfilled"


async def test_the_stream_and_the_pages_give_the_same_events_from_any_cursor(
    api_server: InProcessServer, pool, ids, make_user: MakeUser, monkeypatch
):
    monkeypatch.setattr(feed, "STREAM_READ", 700)  # the stream reads 2,500 events in 4 reads, the next during a send
    user, token = await make_user()
    mine, other = ids.project(), ids.project()
    positions = await insert_events(pool, mine, user, 2500)
    await insert_events(pool, other, user, 30)
    stranger, _ = await make_user()
    await insert_events(pool, ids.project(), stranger, 5)  # someone else's: in neither answer
    async with httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        cursors = [None, await cursor_at(pool, positions[0]), await cursor_at(pool, positions[1499])]
        cursors.append(await cursor_at(pool, positions[-1]))
        for after in cursors:
            for project, limit in ((None, 1000), (mine, 1000), (mine, 333), (other, 7)):
                from_pages = await paged(http, after, project, limit)
                from_stream = await streamed(http, after, project)
                assert from_stream == from_pages
        everything = await streamed(http, None, None)
        mine_only = await streamed(http, cursors[2], mine)
        nothing = await streamed(http, cursors[3], mine)
    assert [msgspec.json.decode(line)["position"] for line in mine_only] == positions[1500:]
    assert nothing == []
    mine_positions = [msgspec.json.decode(line)["position"] for line in everything]
    assert set(positions) <= set(mine_positions) and len(mine_positions) == len(set(mine_positions))
    assert mine_positions == sorted(mine_positions)


@pytest.mark.parametrize(
    ("after", "status"),
    [("not-a-cursor", 400), ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 400), ("AAAAAAAAAAAAAAAAAAAAAAAAAAA", 410)],
)
async def test_a_stream_refused_is_a_json_error(api_server, make_user: MakeUser, after: str, status: int):
    _, token = await make_user()
    async with httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        response = await http.get("/api/events", params={"after": after}, headers=NDJSON)
    assert response.status_code == status
    assert response.json()["status_code"] == status and response.json()["detail"]


async def test_a_stream_of_a_project_not_yours_is_404(api_server, pool, ids, make_user: MakeUser):
    stranger, _ = await make_user()
    project = ids.project()
    await insert_events(pool, project, stranger, 1)
    _, token = await make_user()
    async with httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        response = await http.get("/api/events", params={"project_id": project}, headers=NDJSON)
    assert response.status_code == 404 and response.json()["detail"]


async def test_the_python_client_catches_up_through_the_stream(
    api_server: InProcessServer, pool, ids, make_user: MakeUser, monkeypatch
):
    monkeypatch.setattr(feed, "STREAM_READ", 700)
    user, token = await make_user()
    project = ids.project()
    positions = await insert_events(pool, project, user, 1500)
    middle = await cursor_at(pool, positions[99])
    async with httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        expected = [msgspec.json.decode(e) for e in await paged(http, middle, project, 1000)]
    client = FeedClient(api_server.url, token, project_id=project, after=middle)
    assert [e async for e in client.catch_up()] == expected
    assert client.cursor == expected[-1]["cursor"]
    assert [e async for e in client.catch_up()] == []  # caught up: nothing more, the cursor stays
    assert client.cursor == expected[-1]["cursor"]
    # `events()` catches up through the stream, then follows the socket: every event once, in order.
    follower = FeedClient(api_server.url, token, project_id=project, after=None)
    seen = []
    async with asyncio.timeout(30):
        async for event in follower.events():
            seen.append(event["position"])
            if len(seen) == len(positions):
                break
    assert seen == positions
    with pytest.raises(CursorReset):
        [e async for e in FeedClient(api_server.url, token, after="AAAAAAAAAAAAAAAAAAAAAAAAAAA").catch_up()]
