"""What the wiring (`runtime.bootstrap`) hands the handlers and routes: the settings, the pool, the Redis client,
factories for the dedicated connections, and the clock; and what a lost dependency looks like."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Awaitable, Callable

import asyncpg
import msgspec
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain.clip import Context
from eventlog.store import DATABASE_UNAVAILABLE
from runtime.settings import Settings
from storage.base import Storage
from storage.local import LocalStorage

# What a lost PostgreSQL or Redis looks like from here: answered with 503 by the API, retried by workers.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    *DATABASE_UNAVAILABLE,
    RedisConnectionError,
    RedisTimeoutError,
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Services(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis | None = None
    # Dedicated connections, made when a caller needs one (and again after it is lost):
    connect_listener: Callable[[], Awaitable[asyncpg.Connection]]  # the feed broker's LISTEN connection
    connect_leader: Callable[[], Awaitable[asyncpg.Connection]]  # a reactor's or reaper's advisory-lock holder
    connect_queue: Callable[..., Awaitable[ArqRedis]]  # the worker's arq pool (takes arq's create_pool options)
    storage: Storage | None = None  # where sources and clips live (bootstrap.open_storage); None: the local roots

    @property
    def store(self) -> Storage:
        """The storage backend: the one wired in, else the local folders of the settings."""
        return self.storage if self.storage is not None else LocalStorage(self.settings.media_root, self.settings.output_root)

    def context(self) -> Context:
        """A decision context for now, with a fresh jitter."""
        return self.settings.context(utcnow(), random.random())

    async def close(self) -> None:
        if self.storage is not None:
            await self.storage.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.pool.close()
