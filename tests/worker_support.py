"""A worker in the test's own process, as `cliplog worker` runs it: the arq worker, its presence key and the leader
(the dispatcher, or the reactor with dispatch "fifo"), on services opened from the given settings (and storage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from handlers import dispatcher, reactor
from handlers.worker import _poll_forever, _shut_down, announce, make_worker, presence_prefix
from runtime.bootstrap import open_services
from runtime.settings import Settings
from storage.base import Storage
from usecases.services import Services


@asynccontextmanager
async def running_worker(
    settings: Settings,
    storage: Storage | None = None,
    *,
    job_timeout: float | None = None,
    name: str = "test-worker",
    concurrency: int = 1,
) -> AsyncIterator[Services]:
    """The worker (`concurrency` jobs at a time) until the block ends; then it shuts down as on SIGTERM. `storage`
    None: what the settings name."""
    services = await open_services(settings, pool_size=8, storage=storage)
    queue = await reactor.job_queue(services.pool)
    worker = make_worker(services, name, queue, concurrency=concurrency,
                         job_timeout=job_timeout or settings.attempt_timeout + 120)  # fmt: skip
    presence = presence_prefix(queue.epoch) + name
    leader = dispatcher.follow if settings.dispatch == "fair" else reactor.follow
    following = [asyncio.create_task(announce(services, presence, concurrency)), asyncio.create_task(leader(services))]
    polling = asyncio.create_task(_poll_forever(worker))
    try:
        yield services
    finally:
        await _shut_down(worker, polling, grace=0.1)
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
        await services.redis.delete(presence)
        if worker._pool is not None:  # noqa: SLF001 - arq's own close() still calls redis' deprecated close()
            await worker.pool.aclose(close_connection_pool=True)
        await services.close()
