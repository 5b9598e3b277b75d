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


APPENDED, WITHOUT_FINGERPRINT, WITHOUT_JSON = "appended", "018", "017"


def mostly_appended(i: int) -> str:
    k = i % 1000
    return WITHOUT_FINGERPRINT if 500 <= k < 505 else WITHOUT_JSON if 505 <= k < 510 else APPENDED


async def insert_events(
    pool: asyncpg.Pool, project: str, user: str, count: int, kind: Callable[[int], str] | None = None
) -> list[int]:
    """`count` events of `project` (owned by `user`) in one transaction, at positions the log allocates, the i-th
    written as `kind(i)` says: APPENDED as the appends write (with its feed JSON and its cursor fingerprint: the
    feed builds its JSON and cursor in PostgreSQL), WITHOUT_FINGERPRINT as they wrote before migration 019 (with its
    feed JSON: Python mints its cursor) or WITHOUT_JSON as before 018 (the feed builds its JSON at read time). By
    default APPENDED but for the 500th to 509th of every 1,000 (five of each other kind): reads of hundreds of
    events take both paths."""
    kind = kind or mostly_appended
    selected = (
        "SELECT $1::bigint AS position, $2::xid8 AS txid, $3 || '/' || $4 AS stream, $3::text AS project_id, "
        "$4::text AS clip_id, 1 AS version, 'extraction.requested'::text AS type, 1::smallint AS schema_version, "
        "$5::text::jsonb AS data, 'pending'::text AS clip_status, $6::timestamptz AS recorded_at"
    )
    statements = {
        APPENDED: store.insert_sql(f"{selected}, $7::integer AS fingerprint", fingerprint="e.fingerprint"),
        WITHOUT_FINGERPRINT: store.insert_sql(selected),
        WITHOUT_JSON: f"INSERT INTO events ({store.INSERTED}) {selected}",
    }
    rows = [(i, f"c{i}", DATA[i % len(DATA)], STAMPS[i % len(STAMPS)]) for i in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        txid, first = await conn.fetchrow("SELECT txid, first_position FROM cliplog_allocate_positions($1)", count)
        await conn.execute("INSERT INTO projects (project_id, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING", project, user)
        for written, statement in statements.items():
            args = [
                (first + i, txid, project, clip, data, at)
                + ((cursor.stored_fingerprint(f"{project}/{clip}", 1, at),) if written == APPENDED else ())
                for i, clip, data, at in rows
                if kind(i) == written
            ]
            if args:
                await conn.executemany(statement, args)
    return list(range(first, first + count))


def split(events: pages.JsonEvents) -> list[bytes]:
    """The events' JSON, each as it is in the body."""
    return events.body.split(events.separator) if events.count else []


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
    """Pages of events all written with their fingerprints (built whole by PostgreSQL), of events written before
    019 or 018 (the cursors minted by Python), and of both, for pages and the stream's separator alike."""
    user, _ = await make_user()
    project = ids.project()
    # 12 as the appends write them, then 12 of the default mix
    older = (WITHOUT_FINGERPRINT, WITHOUT_JSON)
    positions = await insert_events(pool, project, user, 24, lambda i: APPENDED if i < 12 else older[i % 2])
    epoch = await pool.fetchval("SELECT epoch FROM log_identity")
    encode = msgspec.json.encode
    for after in (positions[0] - 1, positions[3], positions[9], positions[13], positions[-1]):
        for project_id, upto in ((None, None), (project, None), (project, positions[-2]), (None, positions[-2])):
            views = await pages.read_page(pool, epoch, after, 5, user=user, project_id=project_id, upto=upto)
            for separator in (b",", b"\n"):
                built = await pages.read_page_json(
                    pool, epoch, after, 5, user=user, project_id=project_id, upto=upto, separator=separator
                )
                assert built.body == separator.join(encode(v) for v in views)
                assert built.count == len(views)
                assert built.last_cursor == (views[-1].cursor if views else None)
                assert built.last_position == (views[-1].position if views else None)
            given = cursor.encode(epoch, after, 0)
            expected = encode(EventPage(events=views, next_cursor=views[-1].cursor if views else given))
            built = await pages.read_page_json(
                pool, epoch, after, 5, user=user, project_id=project_id, upto=upto, separator=feed.PAGE_SEPARATOR
            )
            assert page_json(built, given) == expected
    assert len(views) == 0  # the last cursor: nothing after it


async def test_a_page_of_events_with_their_fingerprints_is_built_without_python(
    pool, ids, make_user: MakeUser, monkeypatch
):
    """Events stored with their fingerprints (as every append writes them since 019) are read with their cursors
    built by PostgreSQL, none minted in Python; one without it in the page has its cursor minted by Python."""
    user, _ = await make_user()
    project = ids.project()
    positions = await insert_events(pool, project, user, 6, lambda i: WITHOUT_FINGERPRINT if i == 4 else APPENDED)
    epoch = await pool.fetchval("SELECT epoch FROM log_identity")
    views = await pages.read_page(pool, epoch, positions[0] - 1, 6, user=user, project_id=project)
    minted: list[tuple[int, str]] = []
    real = cursor.minter

    def minter(epoch_: object) -> Callable[[int, str], str]:
        mint = real(epoch_)  # type: ignore[arg-type]
        return lambda position, text: minted.append((position, text)) or mint(position, text)

    monkeypatch.setattr(cursor, "minter", minter)
    for limit in (4, 6):  # without the fifth event, then with it
        built = await pages.read_page_json(pool, epoch, positions[0] - 1, limit, user=user, project_id=project)
        assert split(built) == [msgspec.json.encode(v) for v in views[:limit]]
        assert built.last_cursor == views[limit - 1].cursor
    assert [position for position, _ in minted] == [positions[4]]


async def test_an_event_changed_in_place_is_sent_as_it_is_now(pool, ids, make_user: MakeUser):
    """The log is append-only, but a row repaired (or damaged) in place must not keep the feed's stored text or
    fingerprint of what it was: the page says what the row holds now, as the WebSocket's read does. A backfill of the
    stored columns alone keeps what it writes."""
    user, _ = await make_user()
    project = ids.project()
    first = (await insert_events(pool, project, user, 2, lambda i: APPENDED))[0]
    epoch = await pool.fetchval("SELECT epoch FROM log_identity")
    stored = "SELECT (feed_tail, feed_print, feed_fingerprint) FROM events WHERE position = $1"
    assert None not in await pool.fetchval(stored, first)
    changes = ("clip_status = 'completed', data = '{\"repaired\": true}'", "recorded_at = recorded_at + interval '1 s'")
    for change in changes:
        await pool.execute(f"UPDATE events SET {change} WHERE position = $1", first)
        assert await pool.fetchval(stored, first) == (None, None, None)
        views = await pages.read_page(pool, epoch, first - 1, 2, user=user, project_id=project)
        built = await pages.read_page_json(pool, epoch, first - 1, 2, user=user, project_id=project)
        assert split(built) == [msgspec.json.encode(v) for v in views]
        assert built.last_cursor == views[-1].cursor
    assert msgspec.json.decode(split(built)[0])["clip_status"] == "completed"
    assert views[0].cursor == await cursor_at(pool, first)  # the fingerprint of the time as it is now
    await pool.execute(
        "UPDATE events SET feed_tail = 'backfilled', feed_print = 'p', feed_fingerprint = 7 WHERE position = $1", first
    )
    assert await pool.fetchval(stored, first) == ("backfilled", "p", 7)


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
