"""A worker in the test's own process, as `cliplog worker` runs it: the arq worker, its presence key and the leader
(the dispatcher, or the reactor with dispatch "fifo"), on services opened from the given settings (and storage); and
the steps its tests take (register a clip, wait until it settles, read its outcomes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from domain.clip import ClipState, Register
from eventlog import store
from handlers import dispatcher, reactor
from handlers.worker import _poll_forever, _shut_down, announce, holds, make_worker, presence_prefix
from runtime.bootstrap import open_services
from projections import clip_status
from runtime.settings import Settings
from storage.base import Storage
from usecases import clips
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
    # what `cliplog worker` announces: each slot's running attempt and the one waiting behind it
    following = [asyncio.create_task(announce(services, presence, holds(concurrency))),
                 asyncio.create_task(leader(services))]  # fmt: skip
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


async def register(services: Services, clip: str, **fields: object) -> None:
    """Register clip `clip` of project "p" (`match.mp4` from 1 s to 3 s unless `fields` say otherwise)."""
    command = Register(**{"source": "match.mp4", "start": 1.0, "end": 3.0, **fields})  # type: ignore[arg-type]
    await clips.handle(services.pool, "p", clip, command, services.context)


async def settled(services: Services, clip: str, timeout: float = 60) -> ClipState:
    """The clip's state once it is completed or failed (or, past `timeout`, whatever it is then)."""
    deadline = time.monotonic() + timeout
    while True:
        state = await clip_status.load(services.pool, "p", clip)
        if state.status in ("completed", "failed") or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


async def outcomes(services: Services, clip: str) -> list[tuple[int, str, str | None]]:
    """`(attempt, type, code or detector)` of the clip's outcome events."""
    return [
        (e.data["attempt"], e.type.removeprefix("extraction."), e.data.get("code") or e.data.get("detected_by"))
        for e in await store.read_stream(services.pool, "p", clip)
        if e.type in ("extraction.failed", "extraction.timed_out", "extraction.completed")
    ]
