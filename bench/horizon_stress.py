"""Does a follower of the log by position ever skip an event? Writers commit out of order under CPU load.

`python -m bench.horizon_stress [--dsn DSN] [--rounds 3] [--seconds 20] [--writers 3] [--burners 2]`

Each round makes a scratch database, runs `--writers` processes of 4 connections each that append 1-3 events per
transaction and commit after a random delay (so commits land out of position order), `--burners` busy-loop
processes, and one reader that follows the log with `store.read_after`'s horizon from position 0 in pages of 1-25.
At the end it compares what the reader saw with the table: every event once, in order. Rounds alternate the
horizon of migrations/005 (which matched a transaction's locks by virtual transaction id) with the current one, on
the same server, and the table gives the events skipped per round. A skip is a correctness failure: the exit
status is 1 when the current horizon skipped anything.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import sys
import time
from datetime import datetime, timezone

import asyncpg

from bench.scratch import scratch_database
from domain.events import ExtractionRequested
from eventlog import store
from eventlog.migrate import MIGRATIONS_DIR

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
EVENT = ExtractionRequested(run=1, attempt=1, reason="registered", not_before=T0, source="a.mp4", start=0.0, end=1.0)
READ = "SELECT position FROM events WHERE position > $1 AND txid < (SELECT cliplog_safe_horizon()) ORDER BY position LIMIT $2"


def old_horizon_sql() -> str:
    """Migration 005's `cliplog_safe_horizon()`, to put back in a round's database."""
    text = (MIGRATIONS_DIR / "005_appender_horizon.sql").read_text()
    return re.search(r"CREATE OR REPLACE FUNCTION cliplog_safe_horizon\(\).*?\$\$;", text, re.S).group(0)


async def _write(url: str, process: int, stop_at: float) -> None:
    async def one(k: int) -> None:
        conn = await asyncpg.connect(url)
        await store.init_connection(conn)
        rng, version = random.Random(process * 100 + k), 0
        try:
            while time.time() < stop_at:
                batch = rng.randint(1, 3)
                async with conn.transaction():
                    await store.append(conn, project_id=f"p{process}", clip_id=f"c{k}", expected_version=version,
                                       events=[(EVENT, "pending")] * batch, recorded_at=T0)
                    await asyncio.sleep(rng.uniform(0, 0.02))  # commit late, after others that allocated after us
                version += batch
        finally:
            await conn.close()

    await asyncio.gather(*(one(k) for k in range(4)))


def _writer(url: str, process: int, stop_at: float) -> None:
    asyncio.run(_write(url, process, stop_at))


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


async def _follow(url: str, writers_done: asyncio.Event) -> tuple[list[int], list[int]]:
    async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
        seen: list[int] = []
        last, rng = 0, random.Random(1)
        while True:
            rows = await pool.fetch(READ, last, rng.randint(1, 25))
            if rows:
                seen.extend(r[0] for r in rows)
                last = rows[-1][0]
                continue
            if writers_done.is_set() and last == await pool.fetchval("SELECT coalesce(max(position), 0) FROM events"):
                break
            await asyncio.sleep(0.001)
        return seen, [r[0] for r in await pool.fetch("SELECT position FROM events ORDER BY position")]


async def round_(admin_dsn: str, old: bool, args: argparse.Namespace) -> tuple[int, int]:
    """One round: (events, events the reader skipped)."""
    async with scratch_database(admin_dsn, "horizon") as scratch:
        url = scratch.dsn
        if old:
            conn = await asyncpg.connect(url)
            await conn.execute(old_horizon_sql())
            await conn.close()
        stop_at = time.time() + args.seconds
        spawn = multiprocessing.get_context("spawn")
        writers = [spawn.Process(target=_writer, args=(url, w, stop_at)) for w in range(args.writers)]
        burners = [spawn.Process(target=_burn, args=(stop_at,)) for _ in range(args.burners)]
        for p in writers + burners:
            p.start()
        done = asyncio.Event()

        async def wait_writers() -> None:
            while any(p.is_alive() for p in writers):
                await asyncio.sleep(0.1)
            done.set()

        (seen, everything), _ = await asyncio.gather(_follow(url, done), wait_writers())
        for p in burners:
            p.join()
        if len(seen) != len(set(seen)) or seen != sorted(seen):
            raise AssertionError("the reader saw an event twice or out of order")
        return len(everything), len(set(everything) - set(seen))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CLIPLOG_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each horizon")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--writers", type=int, default=3, help="writer processes (4 connections each)")
    parser.add_argument("--burners", type=int, default=2, help="busy-loop processes")
    args = parser.parse_args()
    results: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    for i in range(args.rounds):
        for old in (True, False):
            events, skipped = await round_(args.dsn, old, args)
            results[old].append((events, skipped))
            print(f"round {i + 1} {'005' if old else 'now'}: {events} events, {skipped} skipped", file=sys.stderr)
    print("| horizon | rounds with a skip | events skipped / events |")
    print("| --- | --- | --- |")
    for old, label in ((True, "migrations/005 (by virtual transaction id)"), (False, "now (by backend)")):
        rs = results[old]
        print(f"| {label} | {sum(1 for _, s in rs if s)} of {len(rs)} | {sum(s for _, s in rs)} / {sum(e for e, _ in rs)} |")
    return 1 if any(s for _, s in results[False]) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
