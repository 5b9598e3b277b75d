"""The worker process: arq polling for extraction jobs, plus the reactor, the reaper and a presence key.

It outlives Redis and PostgreSQL outages (arq's polling loop is restarted after a connection error; the
background loops retry on their own) with no supervisor. On SIGTERM/SIGINT it stops taking jobs, gives running
extractions `shutdown_grace` seconds to finish, then cancels the rest, which hand their attempt back without
using it up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
from typing import Any, Awaitable, Callable

from arq.connections import RedisSettings
from arq.worker import Worker, func

from handlers import dispatcher, reactor, reaper
from handlers.extraction import extract
from handlers.presence import PRESENCE_PREFIX, PRESENCE_TTL
from runtime.aio import reraise_if_cancelled, wait_event
from runtime.settings import Settings
from usecases.services import DEPENDENCY_ERRORS, Services

log = logging.getLogger("cliplog.worker")


async def announce(services: Services, worker_id: str, concurrency: int) -> None:
    """Keep a short-lived presence key in Redis, holding the worker's concurrency: health counts the live workers,
    the dispatcher adds up their slots."""
    while True:
        try:
            await services.redis.set(PRESENCE_PREFIX + worker_id, str(concurrency), ex=PRESENCE_TTL)
        except Exception as error:
            log.warning("cannot announce worker presence: %s", error)
        await asyncio.sleep(PRESENCE_TTL / 3)


class WakeableWorker(Worker):
    """arq's Worker, woken the moment a job is enqueued (a Redis message from the reactor or the reaper) or a slot
    frees up, instead of only on its next poll; `poll_delay` remains the fallback (lost wake-ups, deferred jobs).
    Overrides arq 0.28's `main` loop and its slot-release hook; the job runner is arq's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = asyncio.Event()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await self.ctx["services"].connect_queue(
                default_queue_name=self.queue_name, expires_extra_ms=self.expires_extra_ms
            )
        self.ctx["redis"] = self.pool
        while True:
            self.wake.clear()
            await self._poll_iteration()
            await wait_event(self.wake, self.poll_delay_s)


async def listen_for_wakes(services: Services, wake: asyncio.Event) -> None:
    """Set `wake` on every message of the reactor's wake channel; resubscribe after a Redis outage."""
    while True:
        pubsub = services.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(reactor.WAKE_CHANNEL)
            async for _ in pubsub.listen():
                wake.set()
        except DEPENDENCY_ERRORS as error:
            reraise_if_cancelled()
            log.debug("wake channel lost (%s); resubscribing", error)
        finally:
            try:
                await pubsub.aclose()
            except Exception:
                pass
        wake.set()  # whatever was enqueued meanwhile
        await asyncio.sleep(1.0)


async def extract_job(ctx: dict[str, Any], project_id: str, clip_id: str, run: int, attempt: int) -> str:
    return await extract(ctx["services"], project_id, clip_id, run, attempt, ctx["worker_id"])


async def _poll_forever(worker: Worker) -> None:
    while True:
        try:
            await worker.main()
        except DEPENDENCY_ERRORS as error:
            reraise_if_cancelled()
            log.warning("queue unavailable (%s: %s); polling again in 1 s", type(error).__name__, error)
            await asyncio.sleep(1.0)
        except Exception:  # a Redis error reply, a job bookkeeping failure: log it, keep the worker alive
            reraise_if_cancelled()
            log.exception("polling the queue failed; polling again in 1 s")
            await asyncio.sleep(1.0)


def worker_options(settings: Settings, concurrency: int) -> dict[str, Any]:
    """The arq Worker options of both `cliplog worker` and arq's CLI (`arq runtime.bootstrap.WorkerSettings`)."""
    return {
        "functions": [func(extract_job, name=reactor.EXTRACT_JOB, max_tries=1)],
        "max_jobs": concurrency,
        "job_timeout": reactor.job_timeout(settings),
        "poll_delay": 0.2,
        "keep_result": 3600,
        "log_results": False,
        "retry_jobs": False,
    }


def open_worker(services: Services, concurrency: int) -> dict[str, Any]:
    """The worker's resources and its background loops (the reactor, the reaper, the presence key): arq's ctx."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
    reaper.remove_stale_temporaries(services)
    leader = dispatcher.follow if services.settings.dispatch == "fair" else reactor.follow
    background = [
        asyncio.create_task(announce(services, worker_id, concurrency), name="presence"),
        asyncio.create_task(leader(services), name="dispatcher"),
        asyncio.create_task(reaper.follow(services), name="reaper"),
    ]
    log.info("worker %s started (concurrency %d, %s dispatch)", worker_id, concurrency, services.settings.dispatch)
    return {"services": services, "worker_id": worker_id, "background": background}


async def close_worker(ctx: dict[str, Any]) -> None:
    """Stop what `open_worker` started and close its services, every step bounded."""
    services: Services = ctx["services"]
    for task in ctx["background"]:
        task.cancel()
    await _bounded("background tasks", asyncio.gather(*ctx["background"], return_exceptions=True))
    await _bounded("presence key", services.redis.delete(PRESENCE_PREFIX + ctx["worker_id"]))
    await _bounded("connections", services.close())
    log.info("worker %s stopped", ctx["worker_id"])


async def run_worker(services: Services, concurrency: int = 2) -> None:
    """Run until SIGTERM/SIGINT, then close `services`."""
    settings = services.settings
    ctx = open_worker(services, concurrency)
    worker = WakeableWorker(**worker_options(settings, concurrency), ctx=ctx, handle_signals=False)
    ctx["background"].append(asyncio.create_task(listen_for_wakes(services, worker.wake), name="wake"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    polling = asyncio.create_task(_poll_forever(worker), name="poll")
    try:
        await asyncio.wait([polling, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        await _shut_down(worker, polling, settings.shutdown_grace)
    finally:
        await close_worker(ctx)
        if worker._pool is not None:
            await _bounded("queue connection", worker.close())


def worker_settings(
    settings: Settings, open_services: Callable[[], Awaitable[Services]], redis_settings: RedisSettings,
    concurrency: int = 2,
) -> type:  # fmt: skip
    """A settings class for arq's own CLI: the same jobs, loops and SIGTERM hand-back as `cliplog worker`, with
    the resources in ctx from `on_startup` (see README, "arq's CLI", for what it lacks: wake-ups, and polling
    again after a Redis outage). `runtime.bootstrap.WorkerSettings` is this, wired from the environment."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx.update(open_worker(await open_services(), concurrency))

    return type(
        "WorkerSettings",
        (),
        {
            **worker_options(settings, concurrency),
            "redis_settings": redis_settings,
            "on_startup": on_startup,
            "on_shutdown": close_worker,
            # arq's SIGTERM handler: stop taking jobs, wait this long, then cancel the rest, which hand back
            "job_completion_wait": settings.shutdown_grace,
        },
    )


async def _bounded(step: str, awaitable: Any, seconds: float = 5.0) -> None:
    """One step of shutting down, which must not hold the process for ever."""
    log.info("shutdown: %s", step)
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        log.warning("shutdown: %s did not finish within %g s; going on", step, seconds)
    except Exception as error:
        log.warning("shutdown: %s failed: %s: %s", step, type(error).__name__, error)


async def _shut_down(worker: Worker, polling: asyncio.Task, grace: float) -> None:
    worker.allow_pick_jobs = False
    running = [t for t in worker.job_tasks.values() if not t.done()]
    if running:
        log.info("waiting up to %g s for %d running extraction(s)", grace, len(running))
        _, unfinished = await asyncio.wait(running, timeout=grace)
        for task in unfinished:
            task.cancel()  # the job hands its attempt back
        if unfinished:
            await asyncio.wait(unfinished, timeout=10)
    finishing = [t for t in worker.tasks.values() if not t.done()]
    if finishing:
        log.info("shutdown: job bookkeeping")
        await asyncio.wait(finishing, timeout=5)
    polling.cancel()
    await _bounded("queue polling", asyncio.gather(polling, return_exceptions=True))
