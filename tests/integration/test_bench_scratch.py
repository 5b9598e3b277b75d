"""The benches' scratch database (bench/scratch.py): made, migrated, and dropped however the bench ends."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bench.scratch import scratch_database


async def _exists(admin_url: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await conn.close()


async def test_the_scratch_database_is_migrated_and_dropped_after_the_bench_fails(admin_url: str) -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="the bench's own failure"):
        async with scratch_database(admin_url, "t") as scratch:
            names.append(scratch.name)
            conn = await asyncpg.connect(scratch.dsn)  # left open: the drop ends it
            assert await conn.fetchval("SELECT to_regclass('events') IS NOT NULL")
            raise RuntimeError("the bench's own failure")
    assert names[0].startswith("cliplog_t_")
    assert not await _exists(admin_url, names[0])


async def test_the_drop_survives_the_servers_connections_being_ended_during_the_bench(admin_url: str) -> None:
    """A bench that restarts or disturbs the server (its connections ended, as a restart does) still leaves no
    scratch database behind: the drop opens its own admin connection (one held for the whole run would be dead)."""
    name = f"scratch-test-{secrets.token_hex(4)}"
    parts = urlsplit(admin_url)
    tagged = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, f"application_name={name}"]))))
    async with scratch_database(tagged, "t") as scratch:
        killer = await asyncpg.connect(admin_url)
        try:
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", name
            )
        finally:
            await killer.close()
    assert not await _exists(admin_url, scratch.name)
