"""The scratch database a benchmark runs on: created next to an admin connection, migrated, dropped at the end."""

from __future__ import annotations

import secrets
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from eventlog.migrate import migrate


@dataclass(frozen=True)
class ScratchDatabase:
    name: str
    dsn: str  # the admin DSN with this database in its path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@asynccontextmanager
async def scratch_database(admin_dsn: str, label: str) -> AsyncIterator[ScratchDatabase]:
    """`cliplog_<label>_<hex>` on `admin_dsn`'s server, migrated with `eventlog.migrate.migrate`.

    It is dropped however the block ends (an error, a cancellation, Ctrl-C under `asyncio.run`), with
    `DROP DATABASE ... WITH (FORCE)` (PostgreSQL 13+) on a new admin connection, which ends the connections still
    open to it. Needs the rights to run `CREATE DATABASE`.
    """
    name = f"cliplog_{label}_{secrets.token_hex(4)}"
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    _log(f"created scratch database {name}")
    try:
        conn = await asyncpg.connect(dsn)
        try:
            _log(f"migrated: {', '.join(await migrate(conn))}")
        finally:
            await conn.close()
        yield ScratchDatabase(name, dsn)
    finally:
        await _drop(admin_dsn, name)


async def _drop(admin_dsn: str, name: str) -> None:
    """Drop `name` on a new admin connection (one held for the whole run may have died with a restarted server). A
    failure here is reported, never raised over the bench's own result or error."""
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=30)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        _log(f"could not drop scratch database {name} ({error}); drop it by hand: DROP DATABASE \"{name}\" WITH (FORCE)")
    else:
        _log(f"dropped scratch database {name}")
