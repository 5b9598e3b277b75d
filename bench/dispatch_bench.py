"""Dispatch benchmark: fair admission against first come, first served (CLIPLOG_DISPATCH=fifo), in one run.

    python -m bench.dispatch_bench [--dsn ADMIN_DSN] [--quick] [--clips N] [--rounds R]

The cluster of bench/pipeline_bench.py (a scratch database next to DSN, a private Redis, one `cliplog serve`, the
same generated 60 s 1280x720 source, 10 s copy cuts). In each case user `alice` POSTs a backlog of N clips into
project A (16 requests in flight), then user `bob` POSTs one clip into project B; the case ends when every clip is
`completed`. The cases, interleaved (the order reversed every other round):

    fifo1 / fair1   1 worker process (concurrency 1), CLIPLOG_DISPATCH=fifo / fair
    fifo2 / fair2   2 worker processes (concurrency 1 each)
    bare1 / bare2   the same N cuts by bare FFmpeg, 1 and 2 at a time (the machine's ceiling)

Measured from the log (`recorded_at` and positions): bob's wait (his `requested` → his `started`) and how many of
alice's attempts started in between; alice's throughput (her first `requested` → her last `completed`).
Targets: alice's throughput fair / fifo >= 0.95; fair 2 workers / 1 worker >= 0.95 of bare 2 / 1.
Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import asyncpg
import psutil

from api.auth import create_token
from bench.common import apply_defaults, cell, fmt
from bench.pipeline_bench import (
    DEFAULT_DSN, POST_CONCURRENCY, SOURCE, BenchCluster, Client, bare_batch, batch_start,
    make_source,
)  # fmt: skip
from bench.scratch import scratch_database
from runtime.settings import find_ffmpeg

CLIP_SECONDS = 10.0
TARGET_THROUGHPUT = 0.95
TARGET_SCALING = 0.95


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    case: str
    clips: int
    seconds: float  # alice: first `requested` -> last `completed` (bare: all cuts)
    bob_wait: float = float("nan")  # bob's `requested` -> `started`
    ahead: int = 0  # alice's attempts started between bob's `requested` and his `started`

    @property
    def rate(self) -> float:
        return self.clips / self.seconds


async def post_all(client: Client, project: str, ids: Sequence[str], offset: int = 0) -> None:
    gate = asyncio.Semaphore(POST_CONCURRENCY)

    async def post(i: int, clip_id: str) -> None:
        async with gate:
            start = batch_start(offset + i)
            body = {"clip_id": clip_id, "source": SOURCE, "start": start, "end": start + CLIP_SECONDS}
            response = await client.http.post(f"/api/clips/projects/{project}/clips", json=body)
            if response.status_code != 201:
                raise RuntimeError(f"POST {project}/{clip_id}: {response.status_code} {response.text[:200]}")

    await asyncio.gather(*(post(i, c) for i, c in enumerate(ids)))


async def until_completed(db: asyncpg.Connection, projects: Sequence[str], total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE type = 'extraction.completed') AS done, "
            "count(*) FILTER (WHERE type IN ('extraction.failed', 'extraction.timed_out')) AS bad "
            "FROM events WHERE project_id = ANY($1::text[])",
            list(projects),
        )
        if row["bad"]:
            raise RuntimeError(f"{row['bad']} attempt(s) of {projects} failed or timed out")
        if row["done"] >= total:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{row['done']} of {total} clips of {projects} completed within {timeout:g} s")
        await asyncio.sleep(0.05)


async def service_case(
    cluster: BenchCluster, alice: Client, bob: Client, db: asyncpg.Connection, case: str, n: int, tag: str
) -> Run:
    mode, workers = case[:-1], int(case[-1])
    started = [cluster.worker(f"{case}-{tag}-{k}", concurrency=1, CLIPLOG_DISPATCH=mode) for k in range(workers)]
    try:
        for worker in started:
            await cluster.wait_log(worker, [r"worker \S+ started"])
        await asyncio.sleep(1.0)  # the presence keys are read, one leads the dispatch
        await db.execute("CHECKPOINT")
        a, b = f"a-{case}-{tag}", f"b-{case}-{tag}"
        await post_all(alice, a, [f"c{i:03d}" for i in range(n)])
        await post_all(bob, b, ["only"], offset=n)
        await until_completed(db, [a, b], n + 1, timeout=60 + n * 2.0)
    finally:
        for worker in started:
            await cluster.stop(worker)
    events = await db.fetch(
        "SELECT project_id, type, position, recorded_at FROM events WHERE project_id = ANY($1::text[]) "
        "ORDER BY position",
        [a, b],
    )
    bob_requested = next(e for e in events if e["project_id"] == b and e["type"] == "extraction.requested")
    bob_started = next(e for e in events if e["project_id"] == b and e["type"] == "extraction.started")
    mine = [e for e in events if e["project_id"] == a]
    first = min(e["recorded_at"] for e in mine if e["type"] == "extraction.requested")
    last = max(e["recorded_at"] for e in mine if e["type"] == "extraction.completed")
    ahead = sum(
        1 for e in mine
        if e["type"] == "extraction.started" and bob_requested["position"] < e["position"] < bob_started["position"]
    )  # fmt: skip
    shutil.rmtree(cluster.root / "clips" / a, ignore_errors=True)
    return Run(
        case, n, (last - first).total_seconds(),
        bob_wait=(bob_started["recorded_at"] - bob_requested["recorded_at"]).total_seconds(), ahead=ahead,
    )  # fmt: skip


def render(runs: dict[str, list[Run]], n: int) -> list[str]:
    labels = {
        "fifo1": "cliplog fifo, 1 worker", "fair1": "cliplog fair, 1 worker",
        "fifo2": "cliplog fifo, 2 workers", "fair2": "cliplog fair, 2 workers",
        "bare1": "bare FFmpeg, 1 at a time", "bare2": "bare FFmpeg, 2 at a time",
    }  # fmt: skip
    lines = [
        f"| case | alice's {n} clips/s | alice's {n} clips, s | bob's wait to start, s | alice's attempts started "
        "ahead of bob |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, label in labels.items():
        rs = runs[case]
        service = not case.startswith("bare")
        lines.append(
            f"| {label} | {cell([r.rate for r in rs])} | {cell([r.seconds for r in rs])} | "
            + (f"{cell([r.bob_wait for r in rs])} | {cell([float(r.ahead) for r in rs])} |" if service else "— | — |")
        )

    def ratio(a: str, b: str) -> float:
        return statistics.median(r.rate for r in runs[a]) / statistics.median(r.rate for r in runs[b])

    def verdict(value: float, target: float) -> str:
        return f"target ≥ {target:g}: {'met' if value >= target else 'NOT met'}"

    scaling, bare = ratio("fair2", "fair1"), ratio("bare2", "bare1")
    lines += [
        "",
        "| ratio | median | |",
        "|---|---:|---|",
        f"| bob's wait, fifo / fair, 1 worker | {statistics.median(r.bob_wait for r in runs['fifo1']) / statistics.median(r.bob_wait for r in runs['fair1']):.1f}× | |",
        f"| bob's wait, fifo / fair, 2 workers | {statistics.median(r.bob_wait for r in runs['fifo2']) / statistics.median(r.bob_wait for r in runs['fair2']):.1f}× | |",
        f"| alice's throughput fair / fifo, 1 worker | {ratio('fair1', 'fifo1'):.2f} | {verdict(ratio('fair1', 'fifo1'), TARGET_THROUGHPUT)} |",
        f"| alice's throughput fair / fifo, 2 workers | {ratio('fair2', 'fifo2'):.2f} | {verdict(ratio('fair2', 'fifo2'), TARGET_THROUGHPUT)} |",
        f"| fair 2 workers / 1 worker | {scaling:.2f} | |",
        f"| bare FFmpeg 2 at a time / 1 at a time | {bare:.2f} | |",
        f"| **(fair 2 / 1) / (bare 2 / 1)** | **{scaling / bare:.2f}** | {verdict(scaling / bare, TARGET_SCALING)} |",
        f"| fair 1 worker / bare 1 at a time | {ratio('fair1', 'bare1'):.2f} | |",
    ]  # fmt: skip
    return lines


async def bench(args: argparse.Namespace) -> str:
    began = time.perf_counter()
    async with scratch_database(args.dsn, "dispatch") as scratch:
        database, dsn = scratch.name, scratch.dsn
        workdir = Path(tempfile.mkdtemp(prefix="cliplog-dispatch-bench-"))
        db: asyncpg.Connection | None = None
        cluster: BenchCluster | None = None
        clients: list[Client] = []
        ok = False
        try:
            db = await asyncpg.connect(dsn)
            ffmpeg = find_ffmpeg(os.environ)
            source = make_source(ffmpeg, workdir / "media" / SOURCE)
            cluster = BenchCluster(workdir, database, dsn, ffmpeg)
            cluster.api = await asyncio.to_thread(cluster.serve)
            alice = Client(cluster.api.url, await create_token(db, "alice"))
            bob = Client(cluster.api.url, await create_token(db, "bob"))
            clients += [alice, bob]
            runs: dict[str, list[Run]] = {c: [] for c in ("fifo1", "fair1", "fifo2", "fair2", "bare1", "bare2")}
            order = ["bare1", "fifo1", "fair1", "bare2", "fifo2", "fair2"]
            for r in range(args.rounds):
                for case in order if r % 2 == 0 else order[::-1]:
                    if case.startswith("bare"):
                        await db.execute("CHECKPOINT")
                        t = await bare_batch(cluster, source, args.clips, int(case[-1]))
                        run = Run(case, args.clips, t.seconds)
                    else:
                        run = await service_case(cluster, alice, bob, db, case, args.clips, str(r))
                    runs[case].append(run)
                    log(
                        f"round {r + 1}/{args.rounds} {case}: {run.rate:.2f} clips/s"
                        + ("" if case.startswith("bare") else f", bob waited {run.bob_wait:.2f} s behind {run.ahead} of alice's")
                    )  # fmt: skip
            lines = [
                f"## cliplog dispatch benchmark ({psutil.cpu_count()} CPUs, {args.clips} clips of 10 s in copy mode, "
                f"{args.rounds} round(s), whole run {time.perf_counter() - began:.0f} s)",
                "",
                f"Alice POSTs {args.clips} clips, then bob POSTs one; worker processes of concurrency 1. Host load "
                f"average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
                "",
                *render(runs, args.clips),
            ]
            ok = True
            return "\n".join(lines)
        finally:
            for client in clients:
                await client.close()
            if cluster is not None:
                await asyncio.to_thread(cluster.close)
            if db is not None:
                await db.close()
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                log(f"kept {workdir} (process logs in {workdir / 'logs'})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"admin connection (default {DEFAULT_DSN})")
    parser.add_argument("--quick", action="store_true", help="60 clips, 1 round")
    parser.add_argument("--clips", type=int, help="alice's backlog (default 200, --quick 60)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2, --quick 1)")
    args = parser.parse_args(argv)
    apply_defaults(args, quick={"clips": 60, "rounds": 1}, full={"clips": 200, "rounds": 2})
    print(asyncio.run(bench(args)), flush=True)


if __name__ == "__main__":
    main()
