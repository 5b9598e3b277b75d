"""Event log benchmark: cliplog's log against a raw asyncpg ceiling and the eventsourcing library, side by side.

    python -m bench.eventlog_bench [--dsn DSN] [--quick]

DSN is an admin connection (default postgresql://postgres@127.0.0.1:5432/test). The bench creates a scratch
database `cliplog_bench_<hex>` next to it, migrates it with `eventlog.migrate.migrate`, and drops it at the end.

Writes (one event per transaction, 1 and 8 concurrent writers, each run a fixed duration, CHECKPOINT before each):
  A  cliplog   `eventlog.store.append` in `async with conn.transaction()`, a connection acquired from an asyncpg
               pool (init=eventlog.store.init_connection) per transaction, as `usecases.clips.handle` does. Each
               writer writes clips one after another, each clip its own stream of 6 real domain events built by
               `decide`/`evolve` (requested, started, timed_out, requested (auto retry), started, completed),
               each at its expected version.
  B  raw       the ceiling: the same pool, the same transaction shape (BEGIN; INSERT ... RETURNING position;
               COMMIT) and the same events (encoded the same way) into `raw_events` (bigserial position, stream,
               version, type, data jsonb, recorded_at, UNIQUE (stream, version)). Nothing orders positions by
               commit here: this is what an unordered log costs.
  C  peer      eventsourcing's `PostgresApplicationRecorder.insert_events([StoredEvent])` (psycopg 3, its own
               pool; one transaction that takes `LOCK TABLE ... IN EXCLUSIVE MODE`, NOTIFY, INSERT, COMMIT),
               1 or 8 threads.
  The cases run interleaved (A B C A B C ...) for several rounds; the table shows medians with min and max.

Reads: the events table is bulk-loaded (one INSERT ... SELECT generate_series transaction, then VACUUM ANALYZE),
then read from position 0 to the end in pages of 1000 (the feed's maximum), interleaved and repeated:
  A  cliplog   `eventlog.store.read_after(conn, position, 1000)` (its snapshot-horizon filter, StoredEvent objects)
  B  raw       `SELECT <same columns> FROM events WHERE position > $1 ORDER BY position LIMIT 1000` (asyncpg
               Records, on the same kind of connection, so jsonb is decoded the same way)

Progress goes to stderr; the result table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import unquote, urlsplit

import asyncpg
import msgspec
import psutil

from bench.common import apply_defaults, cell
from bench.scratch import scratch_database
from domain.clip import ClipState, Complete, Context, Register, Start, TimeOut, decide, evolve
from domain.events import SCHEMA_VERSION, ExtractionEvent, encode_data, type_of
from eventlog import store

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
WRITER_COUNTS = (1, 8)
PAGE = 1000  # the feed's maximum page
POOL_SIZE = max(WRITER_COUNTS)
WRITE_CASES = ("cliplog", "raw", "peer")
READ_CASES = ("cliplog", "raw")

RAW_DDL = """
CREATE TABLE raw_events (
    position    bigserial PRIMARY KEY,
    stream      text NOT NULL,
    version     integer NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL,
    UNIQUE (stream, version)
)
"""
RAW_INSERT = (
    "INSERT INTO raw_events (stream, version, type, data, recorded_at) VALUES ($1, $2, $3, $4, $5) RETURNING position"
)
READ_COLUMNS = "position, stream, project_id, clip_id, version, type, schema_version, data, clip_status, recorded_at"
RAW_READ = f"SELECT {READ_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"

# Rows g = 1..$1: project (g-1)/600, clip (g-1)/6, version (g-1)%6 + 1, the lifecycle's k-th event; all in this
# transaction (one txid), committed before anything reads them.
# The rows as the appends write them (with their feed JSON: eventlog.feed_json)
BULK_LOAD = store.insert_sql("""
SELECT g AS position, pg_current_xact_id() AS txid, x.p || '/' || x.c AS stream, x.p AS project_id, x.c AS clip_id,
       x.k + 1 AS version, ($2::text[])[x.k + 1] AS type, ($3::smallint[])[x.k + 1] AS schema_version,
       ($4::text[])[x.k + 1]::jsonb AS data, ($5::text[])[x.k + 1] AS clip_status,
       $6::timestamptz + g * interval '1 millisecond' AS recorded_at
FROM generate_series(1, $1::bigint) AS g,
     LATERAL (SELECT 'bench-p' || ((g - 1) / 600) AS p, 'clip-' || ((g - 1) / 6) AS c, ((g - 1) % 6)::int AS k) AS x
""")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The events ---------------------------------------------------------------------------------------------------


def clip_lifecycle() -> list[tuple[ExtractionEvent, str]]:
    """One clip's log as the service writes it, with the clip status after each event (real decide/evolve)."""
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    state = ClipState(project_id="bench", clip_id="template")
    commands = [
        Register(source="/videos/match-2026-11-28-full.mp4", start=754.2, end=769.8, name="second goal"),
        Start(run=1, attempt=1, worker_id="worker-7f3a"),
        TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease", elapsed_seconds=612.4),
        Start(run=1, attempt=2, worker_id="worker-02c1"),
        Complete(
            run=1,
            attempt=2,
            bytes=4_812_331,
            duration_seconds=15.6,
            elapsed_seconds=0.087,
            output="/clips/bench/template-r1a2.mp4",
        ),
    ]
    pairs: list[tuple[ExtractionEvent, str]] = []
    for i, command in enumerate(commands):
        ctx = Context(now=t0 + timedelta(seconds=650 * i))
        for event in decide(state, command, ctx):  # TimeOut yields timed_out + the automatic retry's requested
            state = evolve(state, event, ctx.now)
            pairs.append((event, state.status))
    return pairs


LIFECYCLE = clip_lifecycle()
PEER_TOPICS = [f"domain.events:{type(e).__name__}" for e, _ in LIFECYCLE]


# Results ------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    events: int
    seconds: float
    latencies: Sequence[float] = ()
    host_busy: float = 0.0  # share of all the host's CPUs busy during the run (server + client + anything else)
    client_cores: float = 0.0  # CPUs used by this (client) process during the run

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000


class CpuMeter:
    """Host CPU busy share and this process's CPU use between `start()` and `stop(run)`."""

    def start(self) -> None:
        self._host = psutil.cpu_times()
        self._process = time.process_time()
        self._wall = time.perf_counter()

    def stop(self, run: Run) -> Run:
        host = psutil.cpu_times()
        wall = time.perf_counter() - self._wall
        total = sum(host) - sum(self._host)
        idle = (host.idle - self._host.idle) + (getattr(host, "iowait", 0.0) - getattr(self._host, "iowait", 0.0))
        run.host_busy = 1 - idle / total if total > 0 else 0.0
        run.client_cores = (time.process_time() - self._process) / wall
        return run


def _merge(per_writer: list[list[float]], seconds: float) -> Run:
    latencies = [x for lat in per_writer for x in lat]
    return Run(len(latencies), seconds, latencies)


# Write cases -------------------------------------------------------------------------------------------------


async def _run_async_writers(writers: int, duration: float, one: Callable[[int, int, int], Awaitable[None]]) -> Run:
    """`writers` tasks, each calling `one(writer, clip, version)` clip after clip until the deadline."""
    start = time.perf_counter()
    deadline = start + duration

    async def writer(w: int) -> list[float]:
        latencies: list[float] = []
        clip = 0
        while True:
            for version in range(len(LIFECYCLE)):
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return latencies
                await one(w, clip, version)
                latencies.append(time.perf_counter() - t0)
            clip += 1

    per_writer = await asyncio.gather(*(writer(w) for w in range(writers)))
    return _merge(list(per_writer), time.perf_counter() - start)


async def write_cliplog(pool: asyncpg.Pool, writers: int, duration: float, tag: str) -> Run:
    async def one(w: int, clip: int, version: int) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await store.append(
                    conn,
                    project_id=f"bench-{tag}-w{w}",
                    clip_id=f"clip-{clip}",
                    expected_version=version,
                    events=[LIFECYCLE[version]],
                    recorded_at=datetime.now(timezone.utc),
                )

    return await _run_async_writers(writers, duration, one)


async def write_raw(pool: asyncpg.Pool, writers: int, duration: float, tag: str) -> Run:
    async def one(w: int, clip: int, version: int) -> None:
        event = LIFECYCLE[version][0]
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.fetchval(
                    RAW_INSERT,
                    f"bench-{tag}-w{w}/clip-{clip}",
                    version + 1,
                    type_of(event),
                    encode_data(event),
                    datetime.now(timezone.utc),
                )

    return await _run_async_writers(writers, duration, one)


def write_peer(recorder: Any, writers: int, duration: float) -> Run:
    """Threads calling eventsourcing's insert_events, one StoredEvent each (synchronous, psycopg 3)."""
    from eventsourcing.persistence import StoredEvent as PeerStoredEvent

    barrier = threading.Barrier(writers + 1)
    results: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    deadline = [0.0]

    def writer(w: int) -> None:
        latencies = results[w]
        try:
            barrier.wait()
            while True:
                originator_id = uuid.uuid4()
                for version, (event, _) in enumerate(LIFECYCLE, start=1):
                    t0 = time.perf_counter()
                    if t0 >= deadline[0]:
                        return
                    recorder.insert_events(
                        [
                            PeerStoredEvent(
                                originator_id=originator_id,
                                originator_version=version,
                                topic=PEER_TOPICS[version - 1],
                                state=msgspec.json.encode(event),
                            )
                        ]
                    )
                    latencies.append(time.perf_counter() - t0)
        except BaseException as error:  # reported by the caller
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline[0] = start + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return _merge(results, seconds)


# Read cases --------------------------------------------------------------------------------------------------


async def read_cliplog(pool: asyncpg.Pool, expected: int) -> Run:
    async with pool.acquire() as conn:
        start = time.perf_counter()
        position, count = 0, 0
        while page := await store.read_after(conn, position, PAGE):
            count += len(page)
            position = page[-1].position
        seconds = time.perf_counter() - start
    if count != expected:
        raise AssertionError(f"cliplog read {count} events, expected {expected}")
    return Run(count, seconds)


async def read_raw(pool: asyncpg.Pool, expected: int) -> Run:
    async with pool.acquire() as conn:
        start = time.perf_counter()
        position, count = 0, 0
        while rows := await conn.fetch(RAW_READ, position, PAGE):
            count += len(rows)
            position = rows[-1][0]
        seconds = time.perf_counter() - start
    if count != expected:
        raise AssertionError(f"raw read {count} events, expected {expected}")
    return Run(count, seconds)


async def bulk_load(admin: asyncpg.Connection, n: int) -> float:
    start = time.perf_counter()
    await admin.execute("TRUNCATE events")
    async with admin.transaction():
        await admin.execute(
            BULK_LOAD,
            n,
            [type_of(e) for e, _ in LIFECYCLE],
            [SCHEMA_VERSION[type_of(e)] for e, _ in LIFECYCLE],
            [msgspec.json.encode(encode_data(e)).decode() for e, _ in LIFECYCLE],
            [status for _, status in LIFECYCLE],
            datetime(2026, 11, 28, tzinfo=timezone.utc),
        )
        await admin.execute("SELECT setval('events_position_seq', $1)", n)
    await admin.execute("VACUUM (ANALYZE) events")
    return time.perf_counter() - start


# The table ---------------------------------------------------------------------------------------------------




def _cpu(runs: Sequence[Run]) -> str:
    if not runs:
        return "n/a"
    busy = statistics.median(r.host_busy for r in runs)
    cores = statistics.median(r.client_cores for r in runs)
    return f"{busy:.0%} / {cores:.2f}"


def _ratio(numerators: Sequence[float], denominators: Sequence[float]) -> str:
    """Ratio of the medians, with the range of the per-round ratios (each round's runs were adjacent)."""
    if not numerators or not denominators:
        return "n/a"
    per_round = [a / b for a, b in zip(numerators, denominators)]
    median = statistics.median(numerators) / statistics.median(denominators)
    return f"{median:.2f} ({min(per_round):.2f}–{max(per_round):.2f})"


def render(
    writes: dict[tuple[str, int], list[Run]], reads: dict[str, list[Run]], read_events: int, header: list[str]
) -> str:
    lines = [*header, ""]
    lines.append("| measurement | cliplog | raw asyncpg (ceiling) | eventsourcing (peer) | cliplog / raw | peer / raw |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for writers in WRITER_COUNTS:
        rates = {case: [r.rate for r in writes[(case, writers)]] for case in WRITE_CASES}
        p99s = {case: [r.p99_ms for r in writes[(case, writers)]] for case in WRITE_CASES}
        label = f"{writers} writer{'s' if writers > 1 else ''}"
        lines.append(
            f"| append, {label}: events/s | {cell(rates['cliplog'])} | {cell(rates['raw'])} | "
            f"{cell(rates['peer'])} | {_ratio(rates['cliplog'], rates['raw'])} | "
            f"{_ratio(rates['peer'], rates['raw'])} |"
        )
        lines.append(
            f"| append, {label}: p99 latency ms | {cell(p99s['cliplog'])} | {cell(p99s['raw'])} | "
            f"{cell(p99s['peer'])} | {_ratio(p99s['cliplog'], p99s['raw'])} | "
            f"{_ratio(p99s['peer'], p99s['raw'])} |"
        )
        runs = {case: writes[(case, writers)] for case in WRITE_CASES}
        lines.append(
            f"| append, {label}: host CPU busy / client CPUs | {_cpu(runs['cliplog'])} | {_cpu(runs['raw'])} | "
            f"{_cpu(runs['peer'])} | — | — |"
        )
    rates = {case: [r.rate for r in reads[case]] for case in READ_CASES}
    lines.append(
        f"| read {read_events:,} in order, pages of {PAGE}: events/s | {cell(rates['cliplog'])} | "
        f"{cell(rates['raw'])} | — | {_ratio(rates['cliplog'], rates['raw'])} | — |"
    )
    lines.append(
        f"| read: host CPU busy / client CPUs | {_cpu(reads['cliplog'])} | {_cpu(reads['raw'])} | — | — | — |"
    )
    lines.append("")
    lines.append("Cells: median (min–max) over the rounds. Ratios: ratio of the medians (range of the per-round ratios);")
    lines.append("for events/s higher is better, for p99 latency a ratio above 1 means slower than raw.")
    lines.append(
        f"CPU rows: median share of all {psutil.cpu_count()} host CPUs busy during the run (PostgreSQL, this client and "
        "anything else) / CPUs used by this client process. Near 100% busy means the run was CPU-bound, not fsync-bound."
    )
    eight = [a.rate / b.rate for a, b in zip(writes[("cliplog", 8)], writes[("raw", 8)])]
    ratio8 = statistics.median(r.rate for r in writes[("cliplog", 8)]) / statistics.median(
        r.rate for r in writes[("raw", 8)]
    )
    verdict = "met" if ratio8 >= 0.8 else "NOT met"
    lines.append(
        f"Target cliplog / raw >= 0.80 at 8 writers: {ratio8:.2f} ({verdict}; per round {', '.join(f'{x:.2f}' for x in eight)})."
    )
    return "\n".join(lines)


# Orchestration -----------------------------------------------------------------------------------------------


def _peer_recorder(dsn: str) -> tuple[Any, Any]:
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    parts = urlsplit(dsn)
    datastore = PostgresDatastore(
        dbname=unquote(parts.path.lstrip("/")),
        host=parts.hostname or "localhost",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        pool_size=POOL_SIZE,
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name="es_stored_events")
    recorder.create_table()
    return datastore, recorder


async def bench(args: argparse.Namespace) -> str:
    rounds, duration, read_events, read_rounds = args.rounds, args.duration, args.read_events, args.read_rounds
    async with scratch_database(args.dsn, "bench") as scratch:
        database, dsn = scratch.name, scratch.dsn
        admin: asyncpg.Connection | None = None
        pool: asyncpg.Pool | None = None
        datastore = None
        started = time.perf_counter()
        try:
            admin = await asyncpg.connect(dsn)
            server_version = await admin.fetchval("SHOW server_version")
            await admin.execute(RAW_DDL)
            pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **store.POOL_OPTIONS)
            datastore, recorder = await asyncio.to_thread(_peer_recorder, dsn)

            run_number = 0
            meter = CpuMeter()

            async def write(case: str, writers: int, seconds: float) -> Run:
                nonlocal run_number
                run_number += 1
                tag = f"r{run_number}"
                if case == "cliplog":
                    return await write_cliplog(pool, writers, seconds, tag)
                if case == "raw":
                    return await write_raw(pool, writers, seconds, tag)
                return await asyncio.to_thread(write_peer, recorder, writers, seconds)

            log("warming up (connections, prepared statements)")
            for case in WRITE_CASES:
                await write(case, POOL_SIZE, min(0.5, duration))

            writes: dict[tuple[str, int], list[Run]] = {(c, w): [] for c in WRITE_CASES for w in WRITER_COUNTS}
            for r in range(rounds):
                for writers in WRITER_COUNTS:
                    for case in WRITE_CASES:
                        await admin.execute("CHECKPOINT")
                        meter.start()
                        run = meter.stop(await write(case, writers, duration))
                        writes[(case, writers)].append(run)
                        log(
                            f"write round {r + 1}/{rounds} {writers} writer(s) {case:8s} "
                            f"{run.rate:9,.0f} events/s  p99 {run.p99_ms:6.2f} ms  ({run.events} events; "
                            f"host CPU {run.host_busy:4.0%} busy, client {run.client_cores:.2f} cores)"
                        )

            log(f"bulk-loading {read_events:,} events")
            load_seconds = await bulk_load(admin, read_events)
            log(f"loaded in {load_seconds:.1f} s (including VACUUM ANALYZE)")
            readers = {"cliplog": read_cliplog, "raw": read_raw}
            for case in READ_CASES:  # warm the cache and the statements
                await readers[case](pool, read_events)
            reads: dict[str, list[Run]] = {c: [] for c in READ_CASES}
            for r in range(read_rounds):
                for case in READ_CASES:
                    await admin.execute("CHECKPOINT")
                    meter.start()
                    run = meter.stop(await readers[case](pool, read_events))
                    reads[case].append(run)
                    log(
                        f"read round {r + 1}/{read_rounds} {case:8s} {run.rate:11,.0f} events/s  ({run.seconds:.2f} s; "
                        f"host CPU {run.host_busy:4.0%} busy, client {run.client_cores:.2f} cores)"
                    )

            header = [
                f"## cliplog event log benchmark (PostgreSQL {server_version}, scratch database {database})",
                "",
                f"Appends: one event per transaction (BEGIN; one INSERT; COMMIT), {rounds} interleaved rounds of "
                f"{duration:g} s per case (CHECKPOINT before each run); cliplog and raw on an asyncpg pool of "
                f"{POOL_SIZE} connections, one acquired per transaction; the peer on eventsourcing's psycopg pool of "
                f"{POOL_SIZE}, writers as threads. Reads: {read_events:,} bulk-loaded events, {read_rounds} interleaved "
                f"rounds, each reading from position 0 to the end. Whole run {time.perf_counter() - started:.0f} s.",
            ]
            return render(writes, reads, read_events, header)
        finally:
            if pool is not None:
                await pool.close()
            if datastore is not None:
                datastore.close()
            if admin is not None:
                await admin.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eventlog_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"admin connection (default {DEFAULT_DSN})")
    parser.add_argument("--quick", action="store_true", help="short runs and 100,000 events to read (~30 s)")
    parser.add_argument("--rounds", type=int, help="interleaved write rounds (default 4)")
    parser.add_argument("--duration", type=float, help="seconds per write run (default 3, --quick 0.6)")
    parser.add_argument("--read-events", type=int, help="events to bulk-load and read (default 1,000,000)")
    parser.add_argument("--read-rounds", type=int, help="interleaved read rounds (default 3)")
    args = parser.parse_args(argv)
    apply_defaults(args, quick={"rounds": 4, "duration": 0.6, "read_events": 100_000, "read_rounds": 3}, full={"rounds": 4, "duration": 3.0, "read_events": 1_000_000, "read_rounds": 3})
    table = asyncio.run(bench(args))
    print(table, flush=True)


if __name__ == "__main__":
    main()
