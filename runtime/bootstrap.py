"""The one place that wires concrete dependencies: the PostgreSQL pool and dedicated connections, the Redis
clients, and the processes built on them (the web app, the worker). Nothing below imports it: `api/cli.py` calls it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Awaitable, Callable
from urllib.parse import urlparse

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool

from eventlog.broker import LISTENER_NAME
from eventlog import store
from runtime.settings import ConfigError, Settings
from storage.base import Storage
from storage.local import LocalStorage
from usecases.services import Services

if TYPE_CHECKING:
    from litestar import Litestar


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
    return await asyncpg.create_pool(
        require_database_url(settings), **store.POOL_OPTIONS, **kwargs
    )


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection for a command (`cliplog migrate`, `token`, `replay`, `check`)."""
    return await asyncpg.connect(require_database_url(settings))


def listener_factory(settings: Settings) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """The feed broker's LISTEN connection (named, so that an operator, or a test, can find it)."""
    dsn = require_database_url(settings)
    return lambda: asyncpg.connect(dsn, timeout=5, server_settings={"application_name": LISTENER_NAME})


def leader_factory(settings: Settings) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """The connection a reactor or reaper holds its advisory lock on."""
    dsn = require_database_url(settings)
    return lambda: asyncpg.connect(
        dsn,
        timeout=10,
        command_timeout=10,  # a half-open connection must not silence the leader for hours
        server_settings={"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"},
    )


def open_storage(settings: Settings) -> Storage:
    """The storage backend CLIPLOG_STORAGE names (README "Object storage")."""
    if settings.storage == "s3":
        from storage.s3 import S3Config, S3Storage  # here, so that local storage never loads the S3 client

        if not settings.s3_bucket:
            raise ConfigError("CLIPLOG_STORAGE=s3 needs CLIPLOG_S3_BUCKET")
        return S3Storage(
            S3Config(
                bucket=settings.s3_bucket,
                output_bucket=settings.s3_output_bucket,
                endpoint=settings.s3_endpoint,
                region=settings.s3_region,
                source_prefix=settings.s3_source_prefix,
                output_prefix=settings.s3_output_prefix,
                path_style=settings.s3_path_style,
                timeout=settings.s3_timeout,
            )
        )
    return LocalStorage(settings.media_root, settings.output_root)


async def open_services(settings: Settings, *, pool_size: int = 10, storage: Storage | None = None) -> Services:
    """Connections are made lazily, so a process starts (and answers 503) while PostgreSQL or Redis is down.
    `storage`: a backend made elsewhere (tests, benchmarks); else the one the settings name."""
    pool = await create_db_pool(settings, min_size=0, max_size=pool_size)
    queue_settings = redis_settings(settings)  # validates the URL
    redis = ArqRedis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    return Services(
        settings=settings,
        pool=pool,
        redis=redis,
        connect_listener=listener_factory(settings),
        connect_leader=leader_factory(settings),
        connect_queue=functools.partial(create_pool, queue_settings),
        storage=storage if storage is not None else open_storage(settings),
    )


def web_app(settings: Settings) -> Litestar:
    """`cliplog serve`'s application: its services are opened when it starts and closed when it stops."""
    from api.app import create_app  # here, so that a worker or a one-off command does not load the web app

    return create_app(functools.partial(open_services, settings, pool_size=20), cors_origins=settings.cors_origins)


async def worker(settings: Settings, concurrency: int = 2) -> None:
    """`cliplog worker`: runs until SIGTERM/SIGINT."""
    from handlers.ffmpeg import use_pidfd_child_watcher
    from handlers.worker import run_worker

    use_pidfd_child_watcher()  # before any subprocess: FFmpeg starts about 1 ms sooner
    await run_worker(await open_services(settings, pool_size=concurrency + 4), concurrency)
