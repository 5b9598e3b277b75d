"""Property: whatever order commits land in, and however connections are cut, every reader of the feed sees its part
of the log (the events of its user's projects, or of one project, after its starting cursor) exactly once, in
position order.

Writers register clips concurrently, each transaction held open a random while before COMMIT (so positions commit
out of order), in projects of two users, one of them claimed half-way through. Readers by long poll and by
WebSocket start at random moments from random cursors (the beginning, or any event so far, even another user's),
and their connections are cut at random moments (mid-backlog too) and resumed from the last cursor they got.

`CLIPLOG_FEED_SEEDS=1,2,...` runs other or more seeds (a failure names its seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.feed_support import cursor_at, expected_positions, open_socket, register, ws_url

SEEDS = [int(s) for s in os.environ.get("CLIPLOG_FEED_SEEDS", "11,22,33").split(",")]
WRITERS, APPENDS_EACH, READERS = 4, 20, 8


@dataclass
class Reader:
    name: str
    kind: str  # "poll" | "ws"
    user: str
    token: str
    project: str | None
    start: int = 0  # position of the starting cursor (0: the beginning)
    cursor: str | None = None
    received: list[dict] = field(default_factory=list)
    target: int | None = None  # the last expected position, once the writers are done
    done_writing: bool = False
    cuts: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)  # its starting cursor is chosen

    def take(self, event: dict) -> None:
        self.received.append(event)
        self.cursor = event["cursor"]

    @property
    def finished(self) -> bool:
        if not self.done_writing:
            return False
        return self.target is None or (bool(self.received) and self.received[-1]["position"] >= self.target)


async def follow_by_socket(reader: Reader, base: str, rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    while not reader.finished:
        url = ws_url(base, reader.token, after=reader.cursor, project_id=reader.project)
        try:
            # a short close timeout: a client that stops reading mid-backlog has paused its socket, so it would
            # wait the whole timeout for the server's closing frame
            ws = await open_socket(url, close_timeout=0.2)
        except OSError:
            continue
        try:
            cut_at = loop.time() + rng.uniform(0.02, 0.4)
            caught_up = False
            while not reader.finished:
                try:
                    async with asyncio.timeout(max(0.0, cut_at - loop.time())):
                        message = json.loads(await ws.recv())
                except TimeoutError:
                    break
                if message["type"] == "event":
                    reader.take(message["event"])
                    if rng.random() < 0.05:
                        break  # cut right after an event, possibly mid-backlog
                elif message["type"] == "caught_up":
                    # once per socket, naming the last event the backlog sent (or the cursor it started from)
                    assert not caught_up, message
                    caught_up = True
                    if reader.cursor is not None:
                        assert message["cursor"] == reader.cursor, (message, reader.cursor)
                else:
                    assert message["type"] == "ping", message
        except ConnectionClosed as closed:
            raise AssertionError(f"{reader.name}: the server closed the socket: {closed}") from None
        finally:
            reader.cuts += 1
            if rng.random() < 0.5:
                ws.transport.abort()  # as a network failure would
            with contextlib.suppress(Exception):
                await ws.close()


async def follow_by_poll(reader: Reader, base: str, rng: random.Random) -> None:
    headers = {"Authorization": f"Bearer {reader.token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        while not reader.finished:
            params: dict[str, str | int] = {"limit": rng.randint(1, 25), "wait": rng.choice(["0", "0.3", "2"])}
            if reader.cursor is not None:
                params["after"] = reader.cursor
            if reader.project is not None:
                params["project_id"] = reader.project
            try:
                async with asyncio.timeout(rng.uniform(0.002, 0.5) if rng.random() < 0.25 else 30):
                    response = await http.get("/api/events", params=params)
            except TimeoutError:
                reader.cuts += 1  # the request is dropped mid-flight; resume from the same cursor
                continue
            assert response.status_code == 200, response.text
            page = response.json()
            for event in page["events"]:
                reader.take(event)
            reader.cursor = page["next_cursor"]


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_reader_sees_its_part_of_the_log_exactly_once_in_order(seed, api_server, pool, ids, make_user):
    rng = random.Random(seed)
    (alice, alice_token), (bob, bob_token) = await make_user(), await make_user()
    a1, a2, a3, b1 = ids.project(), ids.project(), ids.project(), ids.project()
    owner = {a1: alice, a2: alice, a3: alice, b1: bob}
    token = {alice: alice_token, bob: bob_token}
    initial = {alice: [a1, a2], bob: [b1]}
    for project in (a1, a2, b1, a1, b1, a2):  # some history to start from
        await register(pool, project, owner[project])
    ours = [a1, a2, a3, b1]
    appended = 0

    async def writer(w: int) -> None:
        nonlocal appended
        wrng = random.Random(f"{seed}-writer-{w}")
        for _ in range(APPENDS_EACH):
            # a3 is claimed by alice half-way through: readers subscribed before must pick it up
            choices = [a1, a2, b1] + ([a3] if appended >= WRITERS * APPENDS_EACH // 2 else [])
            project = wrng.choice(choices)
            await asyncio.sleep(wrng.uniform(0, 0.03))
            await register(pool, project, owner[project], hold=wrng.choice([0.0, 0.0, wrng.uniform(0, 0.03)]))
            appended += 1

    async def reader_task(reader: Reader) -> None:
        rrng = random.Random(f"{seed}-{reader.name}")
        await asyncio.sleep(rrng.uniform(0, 0.5))
        if rrng.random() < 0.7:  # start at any event so far (of any user), else at the beginning
            positions = await pool.fetch("SELECT position FROM events WHERE project_id = ANY($1::text[])", ours)
            reader.start = rrng.choice([r["position"] for r in positions])
            reader.cursor = await cursor_at(pool, reader.start)
        reader.started.set()
        follow = follow_by_socket if reader.kind == "ws" else follow_by_poll
        await follow(reader, api_server.ws_url if reader.kind == "ws" else api_server.url, rrng)

    readers = []
    for i in range(READERS):
        user = rng.choice([alice, bob]) if i >= 2 else alice  # two of alice's follow all her projects (a3 too)
        project = rng.choice([None, None, *initial[user]]) if i >= 2 else None
        readers.append(Reader(f"reader{i}", ("ws", "poll")[i % 2], user, token[user], project))
    reading = [asyncio.create_task(reader_task(r)) for r in readers]
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    for reader in readers:
        await reader.started.wait()

    for reader in readers:
        expected = await expected_positions(pool, reader.user, reader.start, reader.project)
        reader.target = expected[-1] if expected else None
        reader.done_writing = True
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*reading)
    except TimeoutError:
        stuck = []
        for r in readers:
            if not r.finished:
                expected = await expected_positions(pool, r.user, r.start, r.project)
                got = [e["position"] for e in r.received]
                stuck.append(f"{r.name} {r.kind} {r.user} {r.project} after {r.start}: "
                             f"missing {sorted(set(expected) - set(got))}, extra {sorted(set(got) - set(expected))}, "
                             f"got {got}, expected {expected}, cuts {r.cuts}, task {reading[readers.index(r)]}")
        raise AssertionError(f"seed {seed}: readers did not finish:\n" + "\n".join(stuck)) from None
    finally:
        for task in reading:
            task.cancel()

    for reader in readers:
        expected = await expected_positions(pool, reader.user, reader.start, reader.project)
        got = [e["position"] for e in reader.received]
        context = (
            f"seed {seed}, {reader.name} ({reader.kind}, {reader.user}, project {reader.project}, after {reader.start})"
        )
        assert got == expected, context
        assert all(owner.get(e["project_id"]) == reader.user for e in reader.received), context
        if reader.project is not None:
            assert {e["project_id"] for e in reader.received} <= {reader.project}, context
    assert all(r.cuts for r in readers if r.kind == "ws"), "every socket reader was cut at least once"
    assert any(e["project_id"] == a3 for r in readers for e in r.received if r.user == alice), "a3 reached alice"
