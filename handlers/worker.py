"""The worker process: arq polling for extraction jobs, plus the reactor, the reaper and a presence key.

It outlives Redis and PostgreSQL outages (arq's polling loop is restarted after a connection error; the
background loops retry on their own) with no supervisor. On SIGTERM/SIGINT it stops taking jobs, gives running
extractions `shutdown_grace` seconds to finish, then cancels the rest, which hand their attempt back without
using it up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import socket
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from handlers import dispatcher, metrics, reactor, reaper
from handlers.extraction import extract
from handlers.presence import PRESENCE_TTL, presence_prefix
from runtime.aio import reraise_if_cancelled, wait_event
from usecases.services import DEPENDENCY_ERRORS, Services

log = logging.getLogger("cliplog.worker")


async def announce(services: Services, presence_key: str, concurrency: int) -> None:
    """Keep a short-lived presence key in Redis, holding how many attempts the worker takes at once (`holds`):
    health counts the live workers, the dispatcher adds up what they take."""
    while True:
        try:
            await services.redis.set(presence_key, str(concurrency), ex=PRESENCE_TTL)
        except Exception as error:
            reraise_if_cancelled()
            log.warning("cannot announce worker presence: %s", error)
        reraise_if_cancelled()  # a cancellation the Redis client swallowed must still end the loop
        await asyncio.sleep(PRESENCE_TTL / 3)


# Take the first due job that no worker holds, for this worker, atomically, in one call (arq 0.28 reads the queue,
# then takes each job it read with WATCH/MULTI in four round trips): the job and its score, or nothing. A job another
# worker holds (its in-progress key) is passed over, as one not due yet is never read. The queue is read ARGV[4] jobs
# at a time until a free one or the last due one (arq reads only the first ARGV[4], so that as many held jobs ahead
# capped the whole cluster's running jobs there); what is passed over is bounded by the jobs the workers hold. The
# in-progress keys are named from the job ids inside the script (KEYS cannot name them beforehand): a single Redis,
# as arq needs.
_TAKE = """
local limit, offset = tonumber(ARGV[4]), 0
repeat
    local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', offset, limit)
    for i = 1, #due, 2 do
        local held = ARGV[2] .. due[i]
        if redis.call('exists', held) == 0 then
            redis.call('psetex', held, ARGV[3], '1')
            return {due[i], due[i + 1]}
        end
    end
    offset = offset + limit
until #due < 2 * limit
return false
"""

STANDBY = 1  # attempts each slot may hold waiting behind its running one (admitted to the queue, not taken)


def holds(concurrency: int) -> int:
    """How many attempts a worker of `concurrency` FFmpeg slots takes from the dispatcher at once (its presence
    key): each slot's running attempt and one waiting behind it, which the slot takes the moment its FFmpeg exits,
    without waiting for the running attempt's bookkeeping (fsync, `completed`) or for a dispatcher pass."""
    return concurrency * (1 + STANDBY)


class WakeableWorker(Worker):
    """arq's Worker, woken the moment a job is enqueued (a Redis message from the dispatcher, the reactor or the
    reaper) or a slot frees up, instead of only on its next poll; `poll_delay` remains the fallback (lost wake-ups,
    deferred jobs).

    `slots` FFmpeg runs at a time: a job holds a slot from when the worker takes it until its cut ends (`cut_done`,
    from the job) or the job ends, whichever comes first; the worker takes a job only while a slot is free. arq's
    `max_jobs` (twice the slots) bounds the jobs in the process, so a slot's next attempt starts its FFmpeg while the
    previous one still validates, fsyncs and records its outcome. Overrides arq 0.28's `main` loop, its poll
    iteration, `start_jobs` (one Lua call per job taken, the queue's reading included, instead of a read and a
    WATCH/MULTI transaction per job) and its slot-release
    hook; the job runner is arq's own."""

    def __init__(self, *args: Any, slots: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = slots
        self.cutting: set[str] = set()  # jobs taken whose cut has not ended
        self.wake = asyncio.Event()
        self.not_taking = asyncio.Event()  # set while no job is being taken (`start_jobs` is not under way)
        self.not_taking.set()
        self._take: Any = None

    def cut_done(self, job_id: str) -> None:
        """The job's FFmpeg has exited (or it will run none): its slot may take the next job."""
        if job_id in self.cutting:
            self.cutting.discard(job_id)
            self.wake.set()

    def _slot_free(self) -> bool:
        return len(self.cutting) < self.slots and self.job_counter < self.max_jobs

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()

    def _job_ended(self, job_id: str) -> None:
        self.cutting.discard(job_id)
        self._release_sem_dec_counter_on_complete()

    async def connect(self) -> None:
        """The worker's own Redis connection (once), and its script."""
        if self._pool is None:
            self._pool = await self.ctx["services"].connect_queue(
                default_queue_name=self.queue_name, expires_extra_ms=self.expires_extra_ms
            )
        self.ctx["redis"] = self.pool
        self._take = self.pool.register_script(_TAKE)

    async def main(self) -> None:
        await self.connect()
        while True:
            self.wake.clear()
            await self._poll_iteration()
            await wait_event(self.wake, self.poll_delay_s)

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs and self._slot_free():
            await self.start_jobs()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # errors in run_job propagate
        await self.heart_beat()

    async def start_jobs(self, job_ids: list[bytes] | None = None) -> None:  # type: ignore[override]
        """Take due jobs, one Redis call each, while a slot is free (`job_ids`, arq's, is not used: the call
        reads the queue itself)."""
        self.not_taking.clear()
        try:
            await self._take_jobs()
        finally:
            self.not_taking.set()

    async def _take_jobs(self) -> None:
        while self.allow_pick_jobs and self._slot_free():  # a shutdown begun meanwhile: take nothing more
            await self.sem.acquire()
            self.job_counter += 1
            try:
                taken = await self._take(
                    keys=[self.queue_name],
                    args=[timestamp_ms(), in_progress_key_prefix, int(self.in_progress_timeout_s * 1000),
                          self.queue_read_limit],
                )  # fmt: skip
            except BaseException:
                self.job_counter -= 1
                self.sem.release()
                raise
            if not taken:  # nothing due that no worker holds
                self.job_counter -= 1
                self.sem.release()
                return
            job_id = taken[0].decode() if isinstance(taken[0], bytes) else taken[0]
            score = int(float(taken[1]))
            self.cutting.add(job_id)
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _, job=job_id: self._job_ended(job))
            self.tasks[job_id] = task


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
    slot = ctx.get("cut_done")
    return await extract(
        ctx["services"], project_id, clip_id, run, attempt, ctx["worker_id"], ctx["shutting_down"],
        cut_done=functools.partial(slot, ctx["job_id"]) if slot is not None and "job_id" in ctx else None,
    )  # fmt: skip


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


def make_worker(
    services: Services, worker_id: str, queue: reactor.JobQueue, *, concurrency: int, job_timeout: float
) -> WakeableWorker:
    """The arq worker running the extraction jobs of `queue`, `concurrency` cuts at a time; `ctx["shutting_down"]` is
    set when it stops for good."""
    worker = WakeableWorker(
        functions=[func(extract_job, name=reactor.EXTRACT_JOB, max_tries=1)],
        queue_name=queue.name,
        ctx={"services": services, "worker_id": worker_id, "shutting_down": asyncio.Event()},
        handle_signals=False,
        max_jobs=holds(concurrency),
        slots=concurrency,
        job_timeout=job_timeout,
        poll_delay=0.2,
        keep_result=3600,
        log_results=False,
        retry_jobs=False,
    )
    worker.ctx["cut_done"] = worker.cut_done
    return worker


async def run_worker(services: Services, concurrency: int = 2) -> None:
    """Run until SIGTERM/SIGINT, then close `services`."""
    settings = services.settings
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
    await asyncio.to_thread(reaper.remove_stale_temporaries, services)
    queue = await _log_queue(services)
    presence = presence_prefix(queue.epoch) + worker_id
    worker = make_worker(
        services, worker_id, queue, concurrency=concurrency, job_timeout=reactor.job_timeout(settings)
    )
    leader = dispatcher.follow if settings.dispatch == "fair" else reactor.follow
    background = [
        asyncio.create_task(announce(services, presence, holds(concurrency)), name="presence"),
        asyncio.create_task(leader(services), name="dispatcher" if settings.dispatch == "fair" else "reactor"),
        asyncio.create_task(reaper.follow(services), name="reaper"),
        asyncio.create_task(metrics.follow(services), name="metrics"),
        asyncio.create_task(listen_for_wakes(services, worker.wake), name="wake"),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started (concurrency %d, %s dispatch)", worker_id, concurrency, settings.dispatch)
    polling = asyncio.create_task(_poll_forever(worker), name="poll")
    try:
        await asyncio.wait([polling, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        await _shut_down(worker, polling, settings.shutdown_grace)
    finally:
        for task in background:
            task.cancel()
        await _bounded("background tasks", asyncio.gather(*background, return_exceptions=True))
        await _bounded("presence key", services.redis.delete(presence))
        await _bounded("connections", services.close())
        if worker._pool is not None:
            await _bounded("queue connection", worker.close())
        log.info("worker %s stopped", worker_id)


async def _log_queue(services: Services) -> reactor.JobQueue:
    """The queue named by the log's identity, waiting for PostgreSQL if it is not reachable yet."""
    while True:
        try:
            queue = await reactor.job_queue(services.pool)
            log.info("taking jobs from %s", queue.name)
            return queue
        except DEPENDENCY_ERRORS as error:
            reraise_if_cancelled()
            log.warning("cannot read the log's identity (%s: %s); trying again in 1 s", type(error).__name__, error)
            await asyncio.sleep(1.0)


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


async def _shut_down(worker: WakeableWorker, polling: asyncio.Task, grace: float) -> None:
    """Take no more jobs; give every job taken `grace` seconds to end, its bookkeeping included; then hand back the
    attempts still running (cancelled while `shutting_down` is set) and give their bookkeeping 10 s more. A take
    under way when the shutdown begins ends first, so that its job is one of them (and not left to run unseen
    until the process exits, then timed out by the reaper, its attempt used up)."""
    worker.allow_pick_jobs = False
    await _bounded("a job being taken", worker.not_taking.wait())
    taken = [task for task in worker.tasks.values() if not task.done()]  # arq's run_job tasks
    if taken:
        log.info("waiting up to %g s for %d running extraction(s)", grace, len(taken))
        await asyncio.wait(taken, timeout=grace)
        worker.ctx["shutting_down"].set()
        for function in [task for task in worker.job_tasks.values() if not task.done()]:  # the jobs still at work
            function.cancel()  # the job hands its attempt back; arq's bookkeeping of it goes on
        if unfinished := [task for task in worker.tasks.values() if not task.done()]:
            await asyncio.wait(unfinished, timeout=10)
    polling.cancel()
    await _bounded("queue polling", asyncio.gather(polling, return_exceptions=True))
