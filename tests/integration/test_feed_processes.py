"""The feed across real processes: two `cliplog serve` instances on one database (an event appended through one, or
by another process such as a worker, reaches subscribers of the other), `cliplog tail`, and a subscriber whose
API instance lives through a PostgreSQL restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import asyncpg
import httpx
import pytest

from api.auth import create_token
from eventlog import store
from eventlog.migrate import migrate
from runtime.processes import ApiProcess, Postgres, Process
from tests.feed_support import burst, open_socket, receive_events, register, until_caught_up, until_parked, ws_url
from tests.inprocess import InProcessServer

ROOT = Path(__file__).resolve().parents[2]


def serve(env: dict[str, str], log: Path) -> ApiProcess:
    """`cliplog serve` on a free port as a child process, healthy."""
    return ApiProcess("serve", {**os.environ, **env}, log).start().wait_healthy()


@pytest.fixture
def two_servers(database_url, api_env, tmp_path) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    env = api_env(database_url, CLIPLOG_FEED_POLL_INTERVAL="30")  # only NOTIFY wakes them quickly
    servers = [ApiProcess("a", {**os.environ, **env}, tmp_path / "a.log").start()]
    try:
        servers.append(ApiProcess("b", {**os.environ, **env}, tmp_path / "b.log").start())
        yield servers[0].wait_healthy(), servers[1].wait_healthy()
    finally:
        Process.stop_many(servers, 15)


@pytest.fixture
def in_process(database_url, api_env) -> Iterator[InProcessServer]:
    """A third instance on the same database, in this process (the same app under uvicorn, tests/inprocess.py), whose
    broker the test can inspect: it shows when a long poll is parked."""
    server = InProcessServer(api_env(database_url, CLIPLOG_FEED_POLL_INTERVAL="30")).start()
    try:
        yield server
    finally:
        server.stop()


async def test_an_event_appended_anywhere_reaches_subscribers_of_every_instance(
    two_servers, in_process, pool, ids, make_user
):
    """Sockets on A and B (`cliplog serve` processes) and a long poll on C (`in_process`): an event posted through
    B, and one appended by this process, reach them all through NOTIFY."""
    a, b = two_servers
    c = in_process
    user, token = await make_user()
    project = ids.project()
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        await open_socket(ws_url(a.ws_url, token, after="latest")) as on_a,
        await open_socket(ws_url(b.ws_url, token, after="latest")) as on_b,
        httpx.AsyncClient(base_url=b.url, headers=headers) as via_b,
        httpx.AsyncClient(base_url=c.url, headers=headers, timeout=40) as via_c,
    ):
        for ws in (on_a, on_b):  # both subscriptions are live
            assert await until_caught_up(ws) == []
        head = (await via_c.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
        long_poll_on_c = asyncio.create_task(via_c.get("/api/events", params={"after": head, "wait": "20"}))
        await until_parked(c, user)  # its first read found nothing: only C's broker can answer it now
        # through instance B's API
        started = time.monotonic()
        body = {"source": "a.mp4", "start": 0, "end": 1}
        response = await via_b.post(f"/api/clips/projects/{project}/clips", json=body)
        assert response.status_code == 201, response.text
        first = response.json()["position"]
        assert [e["position"] for e in await receive_events(on_a, first)] == [first]
        assert time.monotonic() - started < 3, "woken by NOTIFY, not by the 30 s poll"
        page = (await long_poll_on_c).json()
        assert [e["position"] for e in page["events"]] == [first]
        assert time.monotonic() - started < 3, "the long poll too: woken by NOTIFY, not by C's 30 s poll"
        # by another process altogether (as a worker appends)
        second = await register(pool, project, user)
        assert [e["position"] for e in await receive_events(on_a, second)] == [second]
        assert [e["position"] for e in await receive_events(on_b, second)] == [first, second]


async def test_cliplog_tail_prints_one_json_event_per_line(two_servers, pool, ids, make_user):
    a, _ = two_servers
    user, token = await make_user()
    project = ids.project()
    positions = [await register(pool, project, user) for _ in range(3)]
    tail = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "tail", "--url", a.url, "--project", project, "--after", "start"],
        env={**os.environ, "CLIPLOG_TOKEN": token},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            while len(lines) < 3:
                lines.append(await loop.run_in_executor(None, tail.stdout.readline))
            positions.append(await register(pool, project, user))  # and it keeps following
            lines.append(await loop.run_in_executor(None, tail.stdout.readline))
        events = [json.loads(line) for line in lines]
        assert [e["position"] for e in events] == positions
        assert all(e["project_id"] == project and e["cursor"] for e in events)
    finally:
        tail.send_signal(signal.SIGINT)
        tail.communicate(timeout=10)
    assert tail.returncode == 0
    refused = subprocess.run(
        [sys.executable, "-m", "api.cli", "tail", "--url", a.url, "--token", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 4 and "401" in refused.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "api.cli", "tail", "--url", a.url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "CLIPLOG_TOKEN"},
    )
    assert missing.returncode == 2 and "CLIPLOG_TOKEN" in missing.stderr


# A PostgreSQL restart under a live subscriber ------------------------------------------------------------------


async def test_subscribers_live_through_a_postgres_restart(private_postgres, api_env, tmp_path, ids):
    server, dsn = private_postgres
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        token = await create_token(conn, "restarted")
    finally:
        await conn.close()
    api = serve(api_env(dsn, CLIPLOG_WS_PING_INTERVAL="0.5"), tmp_path / "serve.log")
    db = await asyncpg.create_pool(dsn, min_size=0, max_size=2, init=store.init_connection)
    try:
        project = ids.project()
        first = await register(db, project, "restarted")
        async with await open_socket(ws_url(api.ws_url, token)) as ws:
            assert [e["position"] for e in await receive_events(ws, first)] == [first]
            await asyncio.to_thread(Postgres(server).restart)
            await db.expire_connections()
            async with asyncio.timeout(20):
                while True:  # the restart itself takes a moment to be usable
                    try:
                        second = await register(db, project, "restarted")
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await asyncio.sleep(0.2)
            # the same socket (it held no database connection) gets the event appended after the restart
            events = await receive_events(ws, second, timeout=20)
            assert [e["position"] for e in events] == [second]
    finally:
        await db.close()
        api.stop(15)
    assert "Traceback" not in api.log.read_text(), api.log.read_text()


# A client that stops reading -------------------------------------------------------------------------------------

# A feed client in a process of its own, with a small receive buffer: it reads everything the server sends until it
# is stopped (SIGSTOP), as a frozen tab or a suspended laptop would.
STOPPABLE_CLIENT = """
import socket, sys
from websockets.sync.client import connect
raw = socket.socket()
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.connect(("127.0.0.1", int(sys.argv[1])))
with connect(sys.argv[2], sock=raw, compression=None, open_timeout=10) as ws:
    print(raw.getsockname()[1], flush=True)
    for _ in ws:
        pass
"""


def server_holds_connection(server_port: int, client_port: int) -> bool:
    """True while a process holds the server's end of the TCP connection to `client_port` (a socket the process has
    closed is either gone from /proc/net/tcp or orphaned, with inode 0)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    if inode != "0":
                        return True
    return False


async def feed_subscribers(api: ApiProcess) -> int:
    async with httpx.AsyncClient(base_url=api.url) as http:
        text = (await http.get("/metrics")).text
    return int(float(next(line.split()[1] for line in text.splitlines() if line.startswith("cliplog_feed_subscribers "))))


@pytest.mark.parametrize(
    ("case", "env", "bound"),
    [
        # events keep coming: the socket's buffers fill and a send blocks; the watchdog stops it after the send
        # timeout, the close waits at most as long, then the connection is aborted after as long again
        ("events", {"CLIPLOG_WS_PING_INTERVAL": "60", "CLIPLOG_WS_SEND_TIMEOUT": "2"}, 3 * 2),
        # nothing to send: the protocol ping goes unanswered (ping interval + send timeout)
        ("idle", {"CLIPLOG_WS_PING_INTERVAL": "2", "CLIPLOG_WS_SEND_TIMEOUT": "2"}, 2 + 2),
    ],
)
async def test_a_stopped_client_is_dropped_within_the_documented_bound(
    database_url, api_env, pool, ids, make_user, tmp_path, case, env, bound
):
    """docs/feed.md: a client that stops reading is dropped (subscription ended, TCP connection closed by the
    server) within 3 x CLIPLOG_WS_SEND_TIMEOUT of the first send that cannot complete, and within
    CLIPLOG_WS_PING_INTERVAL + 2 x CLIPLOG_WS_SEND_TIMEOUT of the moment it stopped reading. Measured against a real
    `cliplog serve`, with a client process stopped by SIGSTOP (events: from the end of the burst, by which time the
    server's sends block). Margin: 2 s for scheduling and the 0.1 s polling here on a shared machine."""
    api = serve(api_env(database_url, **env), tmp_path / "serve.log")
    client = None
    try:
        user, token = await make_user()
        project = ids.project()
        await register(pool, project, user)
        client = subprocess.Popen(
            [sys.executable, "-c", STOPPABLE_CLIENT, str(api.port), ws_url(api.ws_url, token, after="latest")],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        client_port = int(await asyncio.to_thread(client.stdout.readline))
        async with asyncio.timeout(10):
            while await feed_subscribers(api) != 1:
                await asyncio.sleep(0.05)
        assert server_holds_connection(api.port, client_port)
        client.send_signal(signal.SIGSTOP)
        if case == "events":  # 6 MB of events: more than the socket buffers on both sides hold (the server's
            for _ in range(30):  # kernel buffer grows to 4 MB here)
                await burst(pool, project, user, 100, source="x" * 4000)
        stopped = time.monotonic()  # the client stopped reading, and (events) a send can no longer complete
        dropped = ended = None
        async with asyncio.timeout(bound + 20):  # long enough to see by how much a miss misses
            while dropped is None or ended is None:
                if ended is None and await feed_subscribers(api) == 0:
                    ended = time.monotonic() - stopped
                if dropped is None and not server_holds_connection(api.port, client_port):
                    dropped = time.monotonic() - stopped
                await asyncio.sleep(0.1)
        print(f"{case}: subscription ended after {ended:.1f} s, connection closed after {dropped:.1f} s (bound {bound} s)")
        assert ended <= bound + 2 and dropped <= bound + 2, (ended, dropped, bound)
    finally:
        if client is not None:
            client.kill()
            client.communicate()
        api.stop(15)
    assert "Traceback" not in api.log.read_text(), api.log.read_text()
