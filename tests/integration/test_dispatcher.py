"""The dispatcher's pass on the real PostgreSQL and Redis (no worker runs: the presence key stands for one): it
admits exactly the free capacity in the fair order, counts running and admitted attempts against it, admits again
under the same job ids what a flush took out of the queue, never queues an attempt twice, and a waiting clip's
queue position (projections/queue.py) follows the same rule."""

from __future__ import annotations

from typing import AsyncIterator

import msgspec
import pytest
import pytest_asyncio
from arq.constants import job_key_prefix

from api.auth import create_token
from domain.clip import Register, Start
from handlers import dispatcher, reactor
from handlers.presence import presence_prefix
from projections.queue import queue_positions
from runtime.bootstrap import open_services
from runtime.settings import Settings
from usecases.clips import handle, register
from usecases.services import Services



async def worker_key(services: Services) -> str:
    """A presence key standing for one live worker of the log."""
    return presence_prefix((await reactor.job_queue(services.pool)).epoch) + "test-dispatcher"


@pytest_asyncio.fixture(loop_scope="session")
async def services(make_database, redis_url: str) -> AsyncIterator[Services]:  # noqa: ANN001
    """Services on a database of its own (so only this test's clips wait) and the session's Redis database."""
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url))
    try:
        yield services
    finally:
        queue = await reactor.job_queue(services.pool)
        jobs = await services.redis.zrange(queue.name, 0, -1)
        await services.redis.delete(queue.name, *(job_key_prefix.encode() + j for j in jobs))
        await services.redis.delete(await worker_key(services))
        await services.close()


async def _register(services: Services, owner: str, project: str, clips: list[str], **fields: object) -> None:
    await create_token(services.pool, owner)
    for clip in clips:
        command = Register(source="a.mp4", start=0.0, end=1.0, **fields)  # type: ignore[arg-type]
        await register(services.pool, project, clip, command, services.context, user=owner)


async def _queued(services: Services) -> list[tuple[str, str]]:
    queue = await reactor.job_queue(services.pool)
    return sorted((k[0], k[1]) for k in await dispatcher.queued_attempts(services.redis, queue))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_pass_admits_the_free_slots_in_the_fair_order_and_again_after_a_flush(services: Services) -> None:
    await services.redis.set(await worker_key(services), "2", ex=60)  # one live worker of concurrency 2
    await _register(services, "alice", "pa", [f"a{i}" for i in range(5)])
    await _register(services, "bob", "pb", ["b0", "b1"])
    passes = dispatcher.Dispatcher()
    await passes.step(services)
    assert await _queued(services) == [("pa", "a0"), ("pb", "b0")]  # one each: owners in turn
    await passes.step(services)
    assert await _queued(services) == [("pa", "a0"), ("pb", "b0")]  # full: nothing more, nothing twice

    # alice's attempt starts: it still holds its slot (running), and the queue entry no longer counts twice
    await handle(services.pool, "pa", "a0", Start(run=1, attempt=1, worker_id="w"), services.context)
    await passes.step(services)
    assert len(await _queued(services)) == 2

    # Redis loses the queue: the attempt admitted and not started is admitted again, under the same job id
    queue = await reactor.job_queue(services.pool)
    await services.redis.delete(queue.name, job_key_prefix + queue.job_id("pb", "b0", 1, 1))
    await passes.step(services)
    assert await _queued(services) == [("pb", "b0")]
    assert await services.redis.zscore(queue.name, queue.job_id("pb", "b0", 1, 1)) is not None

    # the queue positions follow the same rule (projections/queue.py, from PostgreSQL alone: bob's admitted attempt
    # counts as waiting, and first): bob's, then alice's older one (each has one in flight), then bob's, ...
    positions = await queue_positions(services.pool, "pa", ["a1", "a2"])
    positions |= await queue_positions(services.pool, "pb", ["b0", "b1"])
    assert positions == {"b0": 0, "a1": 1, "b1": 2, "a2": 3}
    backlog = await dispatcher.backlog(services)
    assert backlog.waiting == {"interactive": 5, "batch": 0}  # a1..a4 and b1


@pytest.mark.asyncio(loop_scope="session")
async def test_the_limits_and_priorities_shape_what_a_pass_admits(services: Services) -> None:
    await services.redis.set(await worker_key(services), "8", ex=60)
    await _register(services, "carol", "c1", ["x0", "x1", "x2"])
    await _register(services, "carol", "c2", ["y0", "y1"], priority="batch")
    limited = msgspec.structs.replace(services.settings, project_concurrency=1)
    await dispatcher.Dispatcher().step(msgspec.structs.replace(services, settings=limited))
    assert await _queued(services) == [("c1", "x0"), ("c2", "y0")]
    assert (await dispatcher.backlog(services)).waiting == {"interactive": 2, "batch": 1}
