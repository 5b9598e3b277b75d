"""The fault kinds the soak injects, each bounded in time: the system is whole again when its action returns (a
process killed is started again, a server stopped is back). Two lanes run at once, so faults overlap: `processes`
(kills, deploys, Redis and PostgreSQL) and `clients` (feed cuts, an unrelated transaction held open).

A new capability's fault is a new `FaultKind` in FAULTS (with `available` when it needs something optional).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from typing import Awaitable, Callable

import asyncpg
import msgspec

from runtime.processes import ApiProcess, Process, cliplog_command
from soak.feeds import FeedRecorder
from soak.topology import UNRELATED_TABLE, Topology


# What a deploy gives a worker beyond CLIPLOG_SHUTDOWN_GRACE before it SIGKILLs it: the hand-backs' appends and the
# worker's bounded shutdown steps (handlers/worker.py).
DEPLOY_PATIENCE = 15.0


class Fault(msgspec.Struct, frozen=True):
    kind: str
    began: float  # time.monotonic()
    ended: float
    detail: str
    failed: bool = False


class Context(msgspec.Struct, frozen=True, kw_only=True):
    topology: Topology
    feeds: list[FeedRecorder]
    rng: random.Random


Action = Callable[[Context], Awaitable[str]]


class FaultKind(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    lane: str  # "processes" | "clients"
    weight: float
    action: Action
    available: Callable[[Context], bool] = lambda ctx: True


async def _blocking(ctx: Context, work: Callable[[], str]) -> str:
    """Run `work` (which starts or stops processes) in a thread, holding the topology's process lock."""

    def locked() -> str:
        with ctx.topology.lock:
            return work()

    return await asyncio.to_thread(locked)


async def _kill_then_start(ctx: Context, processes: list[Process], longest_outage: float) -> str:
    """SIGKILL one of `processes` (its whole process group), start it again after up to `longest_outage` s."""
    process = ctx.rng.choice(processes)
    down = round(ctx.rng.uniform(0, longest_outage), 1)

    def work() -> str:
        if process.running:
            process.kill()
        time.sleep(down)
        process.start()
        if isinstance(process, ApiProcess):
            process.wait_healthy(timeout=60)
        return f"{process.name} SIGKILLed, back after {down} s"

    return await _blocking(ctx, work)


async def kill_worker(ctx: Context) -> str:
    return await _kill_then_start(ctx, ctx.topology.workers, 2.0)


async def deploy_worker(ctx: Context) -> str:
    worker = ctx.rng.choice(ctx.topology.workers)
    grace = ctx.topology.settings.shutdown_grace + DEPLOY_PATIENCE

    def work() -> str:
        began = time.monotonic()
        code = worker.stop(grace=grace)
        took = time.monotonic() - began
        worker.start()
        how = f"SIGKILLed {grace:g} s after SIGTERM" if code == -9 else f"exit {code} {took:.1f} s after SIGTERM"
        return f"{worker.name} deployed ({how}) and started again"

    return await _blocking(ctx, work)


async def kill_api(ctx: Context) -> str:
    return await _kill_then_start(ctx, ctx.topology.apis, 1.5)  # type: ignore[arg-type]


async def restart_api(ctx: Context) -> str:
    api = ctx.rng.choice(ctx.topology.apis)

    def work() -> str:
        api.restart(grace=10)
        api.wait_healthy(timeout=60)
        return f"{api.name} SIGTERMed and started again"

    return await _blocking(ctx, work)


async def flush_redis(ctx: Context) -> str:
    redis = ctx.topology.cluster.redis
    assert redis is not None
    await asyncio.to_thread(redis.flush)
    return "FLUSHALL"


async def restart_redis(ctx: Context) -> str:
    redis = ctx.topology.cluster.redis
    assert redis is not None
    down = round(ctx.rng.uniform(0.2, 2), 1)
    await asyncio.to_thread(redis.restart, down)
    return f"killed, back after {down} s"


async def restart_postgres(ctx: Context) -> str:
    postgres = ctx.topology.cluster.postgres
    assert postgres is not None
    began = time.monotonic()
    await asyncio.to_thread(postgres.restart)
    return f"fast shutdown and start ({time.monotonic() - began:.1f} s)"


async def hold_transaction(ctx: Context) -> str:
    """An operator's `BEGIN; UPDATE ...` on a table of no event, left open for a few seconds."""
    held = round(ctx.rng.uniform(1, 5), 1)
    try:
        conn = await asyncpg.connect(ctx.topology.database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        return f"could not connect ({type(error).__name__})"
    try:
        async with conn.transaction():
            await conn.execute(f"UPDATE {UNRELATED_TABLE} SET n = n + 1 WHERE id = 1")
            await asyncio.sleep(held)
        return f"a write transaction held open for {held} s"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:  # PostgreSQL restarted under it
        return f"held until {type(error).__name__}"
    finally:
        conn.terminate()


async def rebuild_projection(ctx: Context) -> str:
    """`cliplog rebuild`: an operator recomputes the clip projection and swaps it in while everything runs. It may
    refuse cleanly (exit 2, one line) when PostgreSQL restarts under it; a traceback is the tool failing."""
    command = cliplog_command("rebuild")
    env = ctx.topology.cluster.env
    result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    said = (result.stdout.strip().splitlines() or result.stderr.strip().splitlines() or ["nothing"])[-1]
    if "Traceback" in result.stderr or result.returncode not in (0, 2, 3):
        raise RuntimeError(f"cliplog rebuild exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return said if result.returncode == 0 else f"refused (exit {result.returncode}): {said}"


def _cut(kind: str) -> Action:
    async def cut(ctx: Context) -> str:
        client = ctx.rng.choice([f for f in ctx.feeds if f.kind == kind])
        return f"{client.name} cut" if client.cut() else f"{client.name} was not connected"

    cut.__name__ = f"cut_{kind}"
    return cut


FAULTS: list[FaultKind] = [
    FaultKind(name="kill_worker", lane="processes", weight=4, action=kill_worker),
    FaultKind(name="deploy_worker", lane="processes", weight=2, action=deploy_worker),
    FaultKind(name="kill_api", lane="processes", weight=2, action=kill_api),
    FaultKind(name="restart_api", lane="processes", weight=1, action=restart_api),
    FaultKind(name="flush_redis", lane="processes", weight=1.5, action=flush_redis),
    FaultKind(name="restart_redis", lane="processes", weight=1.5, action=restart_redis),
    FaultKind(name="restart_postgres", lane="processes", weight=1.5, action=restart_postgres),
    FaultKind(name="hold_transaction", lane="clients", weight=1, action=hold_transaction),
    FaultKind(name="rebuild_projection", lane="clients", weight=0.3, action=rebuild_projection),
    FaultKind(name="cut_websocket", lane="clients", weight=2, action=_cut("ws")),
    FaultKind(name="cut_long_poll", lane="clients", weight=2, action=_cut("poll")),
]


async def inject(
    ctx: Context, lane: str, until: float, mean_gap: float, faults: list[Fault], kinds: list[FaultKind] = FAULTS
) -> None:
    """Faults of `lane` at random (exponential gaps of `mean_gap` seconds) until `until` (time.monotonic())."""
    choices = [k for k in kinds if k.lane == lane and k.available(ctx)]
    while True:
        await asyncio.sleep(ctx.rng.expovariate(1 / mean_gap))
        if time.monotonic() >= until:
            return
        kind = ctx.rng.choices(choices, weights=[k.weight for k in choices])[0]
        began = time.monotonic()
        try:
            detail, failed = await kind.action(ctx), False
        except Exception as error:  # the soak's own tooling failed: say so rather than stop the run
            detail, failed = f"could not be injected: {type(error).__name__}: {error}", True
        faults.append(Fault(kind.name, began, time.monotonic(), detail, failed))
