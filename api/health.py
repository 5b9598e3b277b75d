"""`/api/extraction/health` (no token) and `/metrics` (Prometheus text).

Neither reads the log: the attempt counters, the duration histogram, the clips by status and the recent window
come from the metrics projection (`projections/metrics.py`, kept by a follower a moment behind the log), the queue
from the clip projection's index of unfinished clips, the reactor's lag from two index lookups. Their cost does not
grow with the log (`python -m bench.metrics_bench`)."""

from __future__ import annotations

import asyncio
from typing import Iterable, get_args
from uuid import UUID

import msgspec
from litestar import Request, Response
from litestar.openapi.datastructures import ResponseSpec
from litestar.datastructures import State
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from api.feed import subscriber_count
from api.views import ClipStatus
from handlers import dispatcher, reactor
from handlers.presence import presence_prefix
from api.deps import ServicesDep
from api.openapi import errors, get_or_head
from api.stored import StorageCheck, storage_check
from eventlog import store
from eventlog.store import HorizonHolder
from projections import metrics as metrics_projection
from usecases.services import Services

WINDOW_SECONDS = metrics_projection.WINDOW_SECONDS
BUCKETS = metrics_projection.BUCKETS


class Check(msgspec.Struct):
    ok: bool
    detail: str | None = None


class Workers(msgspec.Struct):
    alive: int


class Queue(msgspec.Struct):
    pending: int
    running: int
    retrying: int
    oldest_pending_seconds: float
    stale_running: int


class Reactor(msgspec.Struct):
    lag_events: int
    # Set when the reactor stopped before an event it cannot decode (it never skips one): its position and why.
    stopped_at: int | None = None
    stopped_reason: str | None = None


class Feed(msgspec.Struct):
    horizon_lag_seconds: float
    held_by: HorizonHolder | None


class Dispatch(msgspec.Struct):
    waiting: dict[str, int]  # attempts due and waiting for admission, per priority
    oldest_wait_seconds: float


class Rates(msgspec.Struct):
    window_seconds: int
    completed: int
    failed: int
    timed_out: int
    success_rate: float | None
    p50_seconds: float | None
    p95_seconds: float | None


class Health(msgspec.Struct):
    status: str
    database: Check
    redis: Check
    workers: Workers | None = None
    queue: Queue | None = None
    reactor: Reactor | None = None
    feed: Feed | None = None
    dispatch: Dispatch | None = None
    rates: Rates | None = None
    storage: StorageCheck | None = None  # the storage backend and whether it answers (api/stored.py)


async def _database(services: Services) -> tuple[Check, UUID | None]:
    """Whether PostgreSQL answers, and the log's identity (which names this deployment's workers in Redis)."""
    try:
        epoch = await asyncio.wait_for(store.epoch(services.pool), 2)
        return Check(ok=True), epoch
    except Exception as error:
        return Check(ok=False, detail=f"{type(error).__name__}: {error}"[:200]), None


async def _redis(services: Services, epoch: UUID | None) -> tuple[Check, int]:
    if services.redis is None:
        return Check(ok=False, detail="not configured"), 0
    try:
        await asyncio.wait_for(services.redis.ping(), 2)
        alive = 0
        async for _ in services.redis.scan_iter(match=presence_prefix(epoch) + "*", count=100):
            alive += 1
        return Check(ok=True), alive
    except Exception as error:
        return Check(ok=False, detail=f"{type(error).__name__}: {error}"[:200]), 0


async def _queue(services: Services) -> Queue:
    row = await services.pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(*) FILTER (WHERE status = 'retrying') AS retrying,
               coalesce(extract(epoch FROM now() - min(status_since) FILTER (WHERE status = 'pending')), 0)
                   AS oldest_pending_seconds,
               count(*) FILTER (WHERE status = 'running' AND deadline_at < now()) AS stale_running
        FROM clips WHERE status IN ('pending', 'running', 'retrying')
        """
    )
    return Queue(**{k: (float(v) if k == "oldest_pending_seconds" else int(v)) for k, v in dict(row).items()})


async def _feed(services: Services) -> Feed:
    horizon = await store.horizon_status(services.pool)
    return Feed(horizon_lag_seconds=horizon.lag_seconds, held_by=horizon.held_by)


async def _rates(services: Services) -> Rates:
    recent = await metrics_projection.recent_rates(services.pool, WINDOW_SECONDS)
    total = recent.completed + recent.failed + recent.timed_out
    return Rates(
        window_seconds=WINDOW_SECONDS,
        completed=recent.completed,
        failed=recent.failed,
        timed_out=recent.timed_out,
        success_rate=round(recent.completed / total, 4) if total else None,
        p50_seconds=recent.p50_seconds,
        p95_seconds=recent.p95_seconds,
    )


async def _backlog(services: Services) -> dispatcher.Backlog | None:
    try:
        return await dispatcher.backlog(services)
    except Exception:  # Redis went away since it was checked: the rest of the answer still holds
        return None


@get_or_head(
    "/api/extraction/health",
    summary="Health of the extraction pipeline (no token needed)",
    tags=["operations"],
    responses={503: ResponseSpec(Health, description="down: PostgreSQL is unreachable", generate_examples=False)},
)
async def health(services: ServicesDep) -> Response[Health]:
    checking_storage = asyncio.ensure_future(storage_check(services))  # bounded; meanwhile PostgreSQL and Redis
    try:
        database, epoch = await _database(services)
        redis, alive = await _redis(services, epoch)
    finally:
        storage = await checking_storage
    if not database.ok:
        return Response(Health(status="down", database=database, redis=redis, storage=storage), status_code=503)
    queue = await _queue(services)
    lag = await reactor.lag(services)
    backlog = await _backlog(services) if redis.ok else None
    stopped = await reactor.stopped(services)
    degraded = (
        not redis.ok or alive == 0 or queue.stale_running > 0 or lag > 1000 or stopped is not None or not storage.ok
    )
    result = Health(
        status="degraded" if degraded else "ok",
        database=database,
        redis=redis,
        workers=Workers(alive=alive),
        queue=queue,
        reactor=Reactor(
            lag_events=lag,
            stopped_at=stopped.position if stopped else None,
            stopped_reason=stopped.reason if stopped else None,
        ),
        feed=await _feed(services),
        dispatch=Dispatch(backlog.waiting, backlog.oldest_wait_seconds) if backlog else None,
        rates=await _rates(services),
        storage=storage,
    )
    return Response(result, status_code=200)


class MetricValues(msgspec.Struct, frozen=True, kw_only=True):
    """What one scrape read from the log, the projection and this process."""

    outcomes: dict[str, int]  # finished attempts by outcome (completed, failed, timed_out, cancelled)
    duration_buckets: list[int]  # cumulative counts of completed attempts per bound of BUCKETS
    duration_sum: float
    duration_count: int
    clips: dict[str, int]  # clips by status
    feed_subscribers: int
    reactor_lag: int
    dispatch_waiting: dict[str, int] = msgspec.field(default_factory=dict)  # attempts waiting for admission
    dispatch_oldest_wait: float = 0.0


def metric_families(values: MetricValues) -> list[Metric]:
    attempts = CounterMetricFamily(
        "cliplog_extraction_attempts", "Finished extraction attempts by outcome.", labels=["outcome"]
    )
    for outcome in ("completed", "failed", "timed_out", "cancelled"):
        attempts.add_metric([outcome], values.outcomes.get(outcome, 0))
    buckets = [(f"{bound:g}", n) for bound, n in zip(BUCKETS, values.duration_buckets)]
    duration = HistogramMetricFamily(
        "cliplog_extraction_duration_seconds",
        "Time to extract a clip, for completed attempts.",
        buckets=[*buckets, ("+Inf", values.duration_count)],
        sum_value=values.duration_sum,
    )
    clips = GaugeMetricFamily("cliplog_clips", "Clips by status.", labels=["status"])
    for status in get_args(ClipStatus):
        clips.add_metric([status], values.clips.get(status, 0))
    subscribers = GaugeMetricFamily(
        "cliplog_feed_subscribers", "WebSocket feed subscribers on this instance.", value=values.feed_subscribers
    )
    lag = GaugeMetricFamily("cliplog_reactor_lag_events", "Events the reactor has not handled yet.", value=values.reactor_lag)
    waiting = GaugeMetricFamily(
        "cliplog_dispatch_waiting", "Attempts due and waiting for admission to the workers.", labels=["priority"]
    )
    for priority in ("interactive", "batch"):
        waiting.add_metric([priority], values.dispatch_waiting.get(priority, 0))
    oldest = GaugeMetricFamily(
        "cliplog_dispatch_oldest_wait_seconds", "How long the attempt waiting longest for admission has waited.",
        value=values.dispatch_oldest_wait,
    )
    return [attempts, duration, clips, subscribers, lag, waiting, oldest]


class _Scrape:
    """A collector of the families one request read (the registry below lives for that request only)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(values: MetricValues, accept: str | None) -> tuple[bytes, str]:
    """The scrape written by prometheus-client in the format the `Accept` header asks for (Prometheus text 0.0.4
    by default, OpenMetrics on request), and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(metric_families(values)))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


async def _metric_values(services: Services, state: State) -> MetricValues:
    projected = await metrics_projection.read(services.pool)
    backlog = await _backlog(services) if services.redis is not None else None
    return MetricValues(
        outcomes={o: int(projected.get("attempts", o)) for o in metrics_projection.OUTCOMES},
        duration_buckets=[int(projected.get("duration_le", f"{bound:g}")) for bound in BUCKETS],
        duration_sum=projected.get("duration", "sum"),
        duration_count=int(projected.get("duration", "count")),
        clips={s: int(projected.get("clips", s)) for s in get_args(ClipStatus)},
        feed_subscribers=subscriber_count(state),
        reactor_lag=await reactor.lag(services),
        dispatch_waiting=backlog.waiting if backlog else {},
        dispatch_oldest_wait=backlog.oldest_wait_seconds if backlog else 0.0,
    )


@get_or_head("/metrics", summary="Prometheus metrics", tags=["operations"], media_type="text/plain", responses=errors())
async def metrics(services: ServicesDep, state: State, request: Request) -> Response[bytes]:
    body, content_type = exposition(await _metric_values(services, state), request.headers.get("accept"))
    return Response(body, media_type=content_type, headers={"content-type": content_type})  # as is: no second charset
