"""`GET /api/events`'s plain pages in one statement (`api.feed.PageRequests`, `eventlog.pages.read_page_request`):
the same bytes and headers as the route's own answer for every kind of page, every refusal answered by the route
(its status, its body, its order of checks), and every other kind of request left to the route.

The route answers a request the fast path does not take (`wait=0` is one: the same page, read by `list_events`),
so each page is fetched both ways and compared byte for byte; `app.state.feed_pages` says which path answered."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from eventlog import cursor
from tests.feed_support import register
from tests.inprocess import InProcessServer

HEADERS = {"Accept-Encoding": "identity"}  # httpx would ask for gzip, which the fast path leaves to Litestar


def client(server: InProcessServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}", **HEADERS}, timeout=40
    )


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, [(k, v) for k, v in response.headers.items() if k != "date"], response.content


async def both_ways(server: InProcessServer, http: httpx.AsyncClient, params: dict[str, str]) -> httpx.Response:
    """The fast path's answer to `params`, checked against the route's (`wait=0`) byte for byte."""
    stats = server.state.feed_pages
    before = stats.answered
    fast = await http.get("/api/events", params=params)
    assert stats.answered == before + 1, (params, fast.status_code, stats.handed_on)
    routed = await http.get("/api/events", params={**params, "wait": "0"})
    assert stats.answered == before + 1
    assert _answer(fast) == _answer(routed), params
    return fast


async def test_plain_pages_take_one_statement_and_are_the_routes_bytes(api_server, pool, ids, make_user):
    user, token = await make_user()
    first, second = ids.project(), ids.project()
    positions = []
    for i in range(9):
        positions.append(await register(pool, first if i % 3 else second, user))
    # rows as written before migration 019 (no stored fingerprint) and before 018 (no stored texts either)
    await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = ANY($1::bigint[])", positions[2:4])
    await pool.execute(
        "UPDATE events SET feed_fingerprint = NULL, feed_print = NULL, feed_tail = NULL WHERE position = $1",
        positions[-1],
    )
    other, other_token = await make_user()
    await register(pool, ids.project(), other)  # another user's event among these: never in this user's pages
    async with client(api_server, token) as http:
        for project in (None, first, second):
            seen: list[int] = []
            params = {"limit": "2"} if project is None else {"limit": "2", "project_id": project}
            while True:
                page = (await both_ways(api_server, http, params)).json()
                seen += [e["position"] for e in page["events"]]
                if not page["events"]:
                    assert page["next_cursor"] == params.get("after", page["next_cursor"])
                    break
                params["after"] = page["next_cursor"]
            owned = {first: positions[1::3] + positions[2::3], second: positions[0::3]}
            assert seen == (positions if project is None else sorted(owned[project]))
        # the default limit, the beginning, a cursor at position 0 of this log
        page = (await both_ways(api_server, http, {})).json()
        start = cursor.decode(page["events"][0]["cursor"])
        await both_ways(api_server, http, {"after": cursor.encode(uuid.UUID(bytes=start.epoch_prefix + bytes(8)), 0, 0)})


async def test_pages_below_and_beyond_the_brokers_head_and_an_old_head(api_server, pool, ids, make_user):
    """Below the broker's head the page is read without the safe horizon, beyond it with; a head whose event has no
    stored fingerprint is not trusted (the page is read with the horizon): the same events either way."""
    user, token = await make_user()
    project = ids.project()
    positions = [await register(pool, project, user) for _ in range(4)]
    broker = api_server.state.feed
    async with client(api_server, token) as http:
        page = (await both_ways(api_server, http, {"project_id": project})).json()
        assert [e["position"] for e in page["events"]] == positions
        known = broker.known
        assert known is not None and known[1] >= positions[0]
        await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = $1", known[1])
        try:
            page = (await both_ways(api_server, http, {"project_id": project})).json()
            assert [e["position"] for e in page["events"]] == positions
        finally:
            await pool.execute(
                "UPDATE events SET feed_fingerprint = $2 WHERE position = $1", known[1],
                cursor.stored_fingerprint(*(await pool.fetchrow(
                    "SELECT stream, version, recorded_at FROM events WHERE position = $1", known[1]))),
            )


async def test_refusals_are_the_routes_answers(api_server, pool, ids, make_user):
    """A bad token, another user's project, a cursor of another log: the statement refuses, the route answers
    (401, 404, 410 with their bodies), and the refusal is counted."""
    user, token = await make_user()
    other, other_token = await make_user()
    mine, theirs = ids.project(), ids.project()
    at = await register(pool, mine, user)
    await register(pool, theirs, other)
    stats = api_server.state.feed_pages
    page = None
    async with client(api_server, token) as http:
        page = (await http.get("/api/events", params={"project_id": mine})).json()
        good = page["events"][0]["cursor"]
        real = cursor.decode(good)
        cases = {
            "unauthorized": ({"Authorization": "Bearer not-a-token"}, {"after": good}, 401),
            "not_found": ({}, {"project_id": theirs}, 404),
            "another_log": ({}, {"after": cursor.encode(uuid.uuid4(), real.position, real.fingerprint)}, 410),
        }
        for reason, (headers, params, status) in cases.items():
            before, answered = stats.handed_on.get(reason, 0), stats.answered
            response = await http.get("/api/events", params=params, headers=headers)
            assert response.status_code == status, (reason, response.text)
            assert stats.handed_on.get(reason, 0) == before + 1 and stats.answered == answered, reason
            routed = await http.get("/api/events", params={**params, "wait": "0"}, headers=headers)
            assert _answer(response) == _answer(routed), reason
        # an event that is not the cursor's any more (a restored database)
        assert (await http.get("/api/events", params={"after": good})).status_code == 200
        moved = cursor.encode(uuid.UUID(bytes=real.epoch_prefix + bytes(8)), real.position, real.fingerprint ^ 1)
        before = stats.handed_on.get("another_log", 0)
        response = await http.get("/api/events", params={"after": moved})
        assert response.status_code == 410 and stats.handed_on["another_log"] == before + 1
        # a revoked token: 401 from the next page on
        await pool.execute("DELETE FROM api_tokens WHERE user_id = $1", user)
        response = await http.get("/api/events", params={"after": good})
        assert response.status_code == 401 and response.json()["detail"] == "unknown or revoked token"


async def test_other_requests_are_left_to_the_route(api_server, pool, ids, make_user):
    """What the fast path does not take goes to `list_events` unchanged (none of it counted as answered)."""
    user, token = await make_user()
    project = ids.project()
    await register(pool, project, user)
    stats = api_server.state.feed_pages
    async with client(api_server, token) as http:
        good = (await http.get("/api/events", params={"project_id": project})).json()["next_cursor"]
        answered = stats.answered
        cases: list[tuple[str, dict[str, str], int]] = [
            ("after=latest", {"Accept-Encoding": "identity"}, 200),
            (f"after={good}&wait=0", {}, 200),
            (f"after={good}", {"Accept": "application/x-ndjson"}, 200),
            (f"project_id={project}", {"Accept-Encoding": "gzip"}, 200),  # compressed by Litestar
            ("limit=1&limit=2", {}, 200),
            ("limit=0", {}, 400),
            ("limit=1001", {}, 400),
            ("limit=01", {}, 400),  # Litestar refuses a leading zero
            ("after=not-a-cursor", {}, 400),
            ("after=", {}, 200),
            ("project_id=a%20b", {}, 400),
            ("other=1", {}, 200),
        ]
        for query, headers, status in cases:
            response = await http.get(f"/api/events?{query}", headers=headers)
            assert response.status_code == status, (query, response.text)
        assert stats.answered == answered
        # without a token, or a token that is not a bearer: 401 before anything else is looked at, as before
        async with httpx.AsyncClient(base_url=api_server.url, headers=HEADERS) as anonymous:
            assert (await anonymous.get("/api/events", params={"limit": "0"})).status_code == 401
            response = await anonymous.get("/api/events", headers={"Authorization": f"Basic {token}"})
            assert response.status_code == 401
        assert (await http.head("/api/events")).status_code == 200
        assert stats.answered == answered


async def test_the_backfill_stores_what_the_appends_write_and_pages_stay_the_same(api_server, pool, ids, make_user):
    """Rows without the stored fingerprint (before migration 019) or without any stored text (before 018) get what
    the appends would have written (`eventlog.pages.backfill_feed`, run by `cliplog rebuild`), and their pages are
    the same bytes before and after."""
    from eventlog.pages import backfill_feed

    user, token = await make_user()
    project = ids.project()
    positions = [await register(pool, project, user) for _ in range(5)]
    columns = "SELECT position, feed_fingerprint, feed_print, feed_tail FROM events WHERE position = ANY($1::bigint[])"
    written = sorted(map(tuple, await pool.fetch(columns, positions)))
    await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = ANY($1::bigint[])", positions[:2])
    await pool.execute(
        "UPDATE events SET feed_fingerprint = NULL, feed_print = NULL, feed_tail = NULL WHERE position = $1",
        positions[3],
    )
    async with client(api_server, token) as http:
        before = await both_ways(api_server, http, {"project_id": project})
        async with pool.acquire() as conn:
            assert await backfill_feed(conn, batch=2) >= 3
            assert await backfill_feed(conn) == 0
        assert sorted(map(tuple, await pool.fetch(columns, positions))) == written
        after = await both_ways(api_server, http, {"project_id": project})
        assert after.content == before.content


async def test_cliplog_rebuild_runs_the_backfill(make_database, ids):
    from eventlog import store
    from tests.integration.test_replay_tools import cliplog

    url = await make_database(migrated=True)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, **store.POOL_OPTIONS)
    try:
        positions = [await register(pool, "p", "alice") for _ in range(3)]
        written = await pool.fetch("SELECT feed_fingerprint FROM events ORDER BY position")
        await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = ANY($1::bigint[])", positions[1:])
        done = cliplog("rebuild", database_url=url)
        assert "stored the feed fingerprint of 2 event(s) written without it" in done.stdout
        assert await pool.fetch("SELECT feed_fingerprint FROM events ORDER BY position") == written
        assert "stored the feed fingerprint" not in cliplog("rebuild", database_url=url).stdout
    finally:
        await pool.close()
