"""The one place that wires concrete dependencies: the PostgreSQL pool, the arq Redis pool, the clock."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from urllib.parse import urlparse

import asyncpg
import msgspec
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain.clip import Context
from eventlog.store import DATABASE_UNAVAILABLE, init_connection
from runtime.settings import ConfigError, Settings


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

    def context(self) -> Context:
        """A decision context for now, with a fresh jitter."""
        return self.settings.context(utcnow(), random.random())

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.pool.close()


def require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError("CLIPLOG_DATABASE_URL is not set (`cliplog dev` starts an embedded PostgreSQL for you)")
    return settings.database_url


def redis_settings(settings: Settings) -> RedisSettings:
    if not settings.redis_url:
        raise ConfigError("CLIPLOG_REDIS_URL is not set (`cliplog dev` starts an embedded Redis for you)")
    parsed = urlparse(settings.redis_url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"CLIPLOG_REDIS_URL must be a redis:// URL (got {settings.redis_url!r})")
    return RedisSettings.from_dsn(settings.redis_url)


async def create_db_pool(settings: Settings, **kwargs: object) -> asyncpg.Pool:
    return await asyncpg.create_pool(require_database_url(settings), init=init_connection, **kwargs)


async def open_services(settings: Settings, *, pool_size: int = 10) -> Services:
    """Connections are made lazily, so a process starts (and answers 503) while PostgreSQL or Redis is down."""
    pool = await create_db_pool(settings, min_size=0, max_size=pool_size)
    redis_settings(settings)  # validates the URL
    redis = ArqRedis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    return Services(settings=settings, pool=pool, redis=redis)
