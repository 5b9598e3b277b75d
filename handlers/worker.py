"""The arq worker: extraction jobs, plus the reactor (and, later, the reaper) as background tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any

from arq.worker import Worker, func

from handlers import reactor
from handlers.extraction import extract
from runtime.bootstrap import Services, open_services, redis_settings
from runtime.settings import Settings

log = logging.getLogger("cliplog.worker")


PRESENCE_PREFIX = "cliplog:worker:"
PRESENCE_TTL = 15


async def announce(services: Services, worker_id: str) -> None:
    """Keep a short-lived presence key in Redis so health can count the live workers."""
    while True:
        try:
            await services.redis.set(PRESENCE_PREFIX + worker_id, "1", ex=PRESENCE_TTL)
        except Exception as error:
            log.warning("cannot announce worker presence: %s", error)
        await asyncio.sleep(PRESENCE_TTL / 3)


async def extract_job(ctx: dict[str, Any], project_id: str, clip_id: str, run: int, attempt: int) -> str:
    return await extract(ctx["services"], project_id, clip_id, run, attempt, ctx["worker_id"])


def build_worker(settings: Settings, concurrency: int = 2, *, burst: bool = False) -> Worker:
    async def startup(ctx: dict[str, Any]) -> None:
        services = await open_services(settings)
        ctx["services"] = services
        ctx["worker_id"] = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        ctx["background"] = [
            asyncio.create_task(reactor.follow(services), name="reactor"),
            asyncio.create_task(announce(services, ctx["worker_id"]), name="presence"),
        ]
        log.info("worker %s started", ctx["worker_id"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in ctx.get("background", []):
            task.cancel()
        await asyncio.gather(*ctx.get("background", []), return_exceptions=True)
        if "services" in ctx:
            try:
                await ctx["services"].redis.delete(PRESENCE_PREFIX + ctx["worker_id"])
            except Exception:
                pass
            await ctx["services"].close()

    return Worker(
        functions=[func(extract_job, name=reactor.EXTRACT_JOB, max_tries=1)],
        redis_settings=redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=concurrency,
        job_timeout=settings.attempt_timeout + 120,
        poll_delay=0.05,
        burst=burst,
        keep_result=3600,
        log_results=False,
        handle_signals=True,
    )
