"""`GET /metrics` and `GET /api/extraction/health` on a log of 10,000 events and on one of 1,000,000.

Both read the metrics projection (projections/metrics.py), so their cost should not grow with the log: the target
is the 1,000,000-event latency within 2x of the 10,000-event one. For scale, each round also times the queries the
two routes ran before the projection (a scan of the log, copied here as they were), on the same database.

How: per size a scratch database `cliplog_metrics_<hex>` on `--dsn` (dropped at the end) and one real `cliplog serve`
on it (which runs the projection's follower), and a private Redis. The log is filled in SQL with clips of three events each
(requested, started, then completed 80% / failed 15% / timed out 5%, with durations of 0-20 s; every clip ends
completed or failed, so the queue's index of unfinished clips stays empty), recorded over the
last 30 days, plus their rows in `clips`. After the fill the bench waits until the follower has projected the
whole log (timed, with the API's start: the catch-up rate), runs VACUUM ANALYZE and CHECKPOINT. Then the rounds
alternate between the sizes (A B A B ..., so that the machine's drift hits both): `--requests` sequential GETs of
each route (after 20 unmeasured ones), then one run of the old queries. Reported: medians over
the rounds of each round's p50 and p99 (with min-max), and the ratios 1,000,000 / 10,000.

`python -m bench.metrics_bench [--dsn DSN] [--quick]` (quick: 10,000 and 100,000 events, 3 rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import httpx

from bench.common import apply_defaults, cell, fmt
from bench.scratch import scratch_database
from domain.clip import HANDED_BACK
from domain.events import SCHEMA_VERSION
from projections import metrics
from runtime.processes import ApiProcess, Redis

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

# Clip c's three events, positions in (clip, version) order.
_FILL = """
INSERT INTO events (position, txid, stream, project_id, clip_id, version, type, schema_version, data, clip_status,
                    recorded_at)
SELECT nextval('events_position_seq'), pg_current_xact_id(), 'bench/c' || c, 'bench', 'c' || c, v, type,
       schema_version, data, status, at
FROM (
    SELECT c, v, e.type, e.schema_version, e.data, e.status, now() - (c % 43200) * interval '1 minute' AS at
    FROM generate_series($1::bigint, $2::bigint) AS c,
         LATERAL (SELECT (abs(hashtext(c::text)) % 100) AS dice, ((abs(hashtext('d' || c)) % 20000) / 1000.0) AS d) r,
         LATERAL (VALUES
             (1, 'extraction.requested', $3::smallint, jsonb_build_object('run', 1, 'attempt', 1, 'reason', 'registered',
                 'source', 'games/match.mp4', 'start', 0, 'end', 10, 'mode', 'copy'), 'pending'),
             (2, 'extraction.started', $4::smallint, jsonb_build_object('run', 1, 'attempt', 1, 'worker_id', 'w'),
                 'running'),
             (3, CASE WHEN r.dice < 80 THEN 'extraction.completed' WHEN r.dice < 95 THEN 'extraction.failed'
                      ELSE 'extraction.timed_out' END,
                 CASE WHEN r.dice < 80 THEN $5::smallint WHEN r.dice < 95 THEN $6::smallint ELSE $7::smallint END,
                 CASE WHEN r.dice < 80 THEN jsonb_build_object('run', 1, 'attempt', 1, 'bytes', 1000,
                          'duration_seconds', 10, 'elapsed_seconds', r.d, 'output', 'bench/c' || c || '.r1a1.mp4')
                      WHEN r.dice < 95 THEN jsonb_build_object('run', 1, 'attempt', 1, 'code', 'ffmpeg_exit',
                          'message', 'x', 'retryable', false, 'elapsed_seconds', r.d)
                      ELSE jsonb_build_object('run', 1, 'attempt', 1, 'detected_by', 'reaper', 'reason', 'lease',
                          'elapsed_seconds', r.d) END,
                 CASE WHEN r.dice < 80 THEN 'completed' ELSE 'failed' END)  -- no clip left unfinished
         ) AS e(v, type, schema_version, data, status)
    ORDER BY c, v
) AS ordered
"""

_FILL_CLIPS = """
INSERT INTO clips (project_id, clip_id, version, status, run, attempt, position, created_at, updated_at, state)
SELECT project_id, clip_id, version, clip_status, 1, 1, position, recorded_at, recorded_at, '{}'::jsonb
FROM events WHERE stream LIKE 'bench/%' AND version = 3 AND position > $1
"""

# What /metrics and health ran before the projection (main before issue 9.11), for scale.
_OLD_QUERIES = [
    ("SELECT type, count(*) AS n FROM events WHERE type IN "
     "('extraction.completed', 'extraction.failed', 'extraction.timed_out') "
     "AND (type <> 'extraction.failed' OR data->>'code' <> $1) GROUP BY type", (HANDED_BACK,)),
    ("""WITH c AS MATERIALIZED (
            SELECT (data->>'elapsed_seconds')::float8 AS d FROM events WHERE type = 'extraction.completed')
        SELECT array(SELECT (SELECT count(*) FROM c WHERE c.d <= u.bound)
                     FROM unnest($1::float8[]) WITH ORDINALITY AS u(bound, i) ORDER BY u.i) AS buckets,
               (SELECT coalesce(sum(d), 0) FROM c) AS total, (SELECT count(*) FROM c) AS n""", (list(metrics.BUCKETS),)),
    ("SELECT status, count(*) AS n FROM clips GROUP BY status", ()),
    ("""SELECT count(*) FILTER (WHERE type = 'extraction.completed') AS completed,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY (data->>'elapsed_seconds')::float)
                   FILTER (WHERE type = 'extraction.completed') AS p50
        FROM events WHERE recorded_at > now() - make_interval(secs => 3600)
          AND type IN ('extraction.completed', 'extraction.failed', 'extraction.timed_out')""", ()),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def fill(conn: asyncpg.Connection, clips_from: int, clips_to: int) -> None:
    """Clips `clips_from`..`clips_to` (three events each), in transactions of 50,000 clips."""
    versions = [SCHEMA_VERSION[t] for t in ("extraction.requested", "extraction.started", "extraction.completed",
                                             "extraction.failed", "extraction.timed_out")]  # fmt: skip
    for start in range(clips_from, clips_to + 1, 50_000):
        end = min(clips_to, start + 49_999)
        before = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        async with conn.transaction():
            await conn.execute(_FILL, start, end, *versions)
            await conn.execute(_FILL_CLIPS, before)
    await conn.execute("SELECT pg_notify('cliplog_events', (SELECT max(position) FROM events)::text)")


async def timed_gets(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    for _ in range(20):
        (await client.get(path)).raise_for_status()
    times = []
    for _ in range(n):
        began = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return times


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def old_queries_ms(conn: asyncpg.Connection) -> float:
    began = time.perf_counter()
    for sql, args in _OLD_QUERIES:
        await conn.fetch(sql, *args)
    return (time.perf_counter() - began) * 1000


async def prepare(dsn: str, size: int, redis_url: str, workdir: Path) -> tuple[asyncpg.Connection, ApiProcess, float]:
    """A database holding `size` events, a `cliplog serve` on it, and how long its follower took to project them."""
    conn = await asyncpg.connect(dsn)
    log(f"filling a log of {size:,} events")
    await fill(conn, 1, size // 3)
    env = {**os.environ, "CLIPLOG_DATABASE_URL": dsn, "CLIPLOG_REDIS_URL": redis_url,
           "CLIPLOG_DATA_DIR": str(workdir), "CLIPLOG_LOG_LEVEL": "WARNING"}  # fmt: skip
    began = time.perf_counter()
    api = ApiProcess(f"serve-{size}", env, workdir / f"serve-{size}.log").start().wait_healthy()
    while await metrics.lag(conn):
        await asyncio.sleep(0.05)
    catch_up = time.perf_counter() - began
    log(f"its follower projected it in {catch_up:.1f} s (including the API's start)")
    await conn.execute("VACUUM ANALYZE")
    await conn.execute("CHECKPOINT")
    return conn, api, catch_up


async def measure(args: argparse.Namespace, dsns: dict[int, str], redis_url: str, workdir: Path) -> dict[int, dict[str, list]]:
    """One database and one API per size; the rounds alternate between them (A B A B ...)."""
    prepared: dict[int, tuple[asyncpg.Connection, ApiProcess, float]] = {}
    results: dict[int, dict[str, list]] = {}
    try:
        for size, dsn in dsns.items():
            prepared[size] = await prepare(dsn, size, redis_url, workdir)
            conn, _, catch_up = prepared[size]
            results[size] = {"metrics_p50": [], "metrics_p99": [], "health_p50": [], "health_p99": [], "old_ms": [],
                             "events": [await conn.fetchval("SELECT count(*) FROM events")], "catch_up": [catch_up]}
        for round_ in range(args.rounds):
            for size, (conn, api, _) in prepared.items():
                row = results[size]
                async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
                    for route, key in (("/metrics", "metrics"), ("/api/extraction/health", "health")):
                        times = await timed_gets(client, route, args.requests)
                        row[f"{key}_p50"].append(statistics.median(times))
                        row[f"{key}_p99"].append(p(times, 99))
                row["old_ms"].append(await old_queries_ms(conn))
                log(f"  round {round_ + 1}, {size:,} events: /metrics p50 {fmt(row['metrics_p50'][-1])} ms, "
                    f"health p50 {fmt(row['health_p50'][-1])} ms, old queries {fmt(row['old_ms'][-1])} ms")
    finally:
        for conn, api, _ in prepared.values():
            api.stop(15)
            await conn.close()
    return results


def report(results: dict[int, dict[str, list]]) -> None:
    sizes = sorted(results)
    print("| events in the log | projected in s (with the API's start) | /metrics p50 ms | /metrics p99 ms | health p50 ms | "
          "health p99 ms | old log-scan queries ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        r = results[size]
        print(f"| {r['events'][0]:,} | {fmt(r['catch_up'][0])} | {cell(r['metrics_p50'])} | {cell(r['metrics_p99'])} | "
              f"{cell(r['health_p50'])} | {cell(r['health_p99'])} | {cell(r['old_ms'])} |")
    small, large = results[sizes[0]], results[sizes[-1]]

    def ratio(key: str) -> float:
        return statistics.median(large[key]) / statistics.median(small[key])

    print()
    print(f"largest / smallest log: /metrics p50 {ratio('metrics_p50'):.2f}x (target <= 2: "
          f"{'met' if ratio('metrics_p50') <= 2 else 'NOT met'}), p99 {ratio('metrics_p99'):.2f}x; "
          f"health p50 {ratio('health_p50'):.2f}x; the old queries {ratio('old_ms'):.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="an admin URL: the bench creates and drops its database")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")])
    args = apply_defaults(parser.parse_args(), {"rounds": 3, "requests": 100, "sizes": [10_000, 100_000]},
                          {"rounds": 5, "requests": 200, "sizes": [10_000, 1_000_000]})  # fmt: skip

    async def run() -> dict[int, dict[str, list]]:
        workdir = Path(tempfile.mkdtemp(prefix="cliplog-metrics-bench-"))
        redis = Redis(workdir / "redis").start()
        try:
            async with AsyncExitStack() as databases:
                dsns = {}
                for size in args.sizes:
                    dsns[size] = (await databases.enter_async_context(scratch_database(args.dsn, "metrics"))).dsn
                return await measure(args, dsns, redis.url, workdir)
        finally:
            redis.stop()

    report(asyncio.run(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
