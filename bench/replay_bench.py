"""Replay tooling benchmark: rebuild, export and replay against what the database gives for free, in one run.

    python -m bench.replay_bench [--dsn DSN] [--quick] [--events N] [--rounds R]

DSN is an admin connection (default postgresql://postgres@127.0.0.1:5432/test). The bench creates a scratch
database `cliplog_bench_<hex>`, migrates it, loads it through `cliplog import`'s own path (`usecases.imports`, a
synthetic log of `tests.histories`: 6 events a clip) and drops it at the end.

Interleaved for R rounds (A B A B ...), medians with min and max:
  rebuild    `projections.rebuild.rebuild` as `cliplog rebuild` runs it (with a second connection): fold every event
             through `evolve`, COPY each clip's row into a new table as soon as it is final, build the indexes, swap
  fold       `projections.rebuild.fold` alone: the rebuild's reading, decoding and folding, nothing written
  raw read   the baseline: the same rows read by keyset pages of the same size (`SELECT` of the same columns), each
             event's data decoded by msgspec into its event struct (`domain.events.decode_json`), nothing else
  export     `eventlog.export.write` of the whole log (JSON lines built by PostgreSQL) into a byte-counting sink
  COPY       the baseline: `COPY (SELECT <the same columns> FROM events ORDER BY position) TO STDOUT` into the same
             sink (PostgreSQL's text format)
  replay     one stream of 1,000 events (a clip retried by a person 333 times): read from the database
             (`projections.replay.read_all`), folded with the reasons (`replay`), printed lines built (`describe`,
             `explain`); and the same from an export file with no database (`eventlog.export.read`)
Targets: rebuild / raw read >= 0.5.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import asyncpg
import msgspec

from bench.common import apply_defaults, cell, fmt
from bench.scratch import scratch_database
from domain.clip import ClipState, Context, Fail, Register, Retry, Start, decide, evolve
from domain.events import SCHEMA_VERSION, decode_json, encode_data, type_of
from eventlog import export
from eventlog.store import StoredEvent, init_connection, stream_name
from projections.rebuild import _PAGE, fold, rebuild
from projections.replay import describe, explain, read_all, replay
from tests.histories import T0, write_log
from usecases.imports import import_file

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_RAW = "SELECT position, stream, type, schema_version, data::text, recorded_at FROM events "  # rebuild's columns


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def raw_read(conn: asyncpg.Connection) -> int:
    count, position = 0, 0
    while rows := await conn.fetch(_RAW + "WHERE position > $1 ORDER BY position LIMIT $2", position, _PAGE):
        for row in rows:
            decode_json(row[2], row[3], row[4])
        count += len(rows)
        position = rows[-1][0]
    return count


class Sink:
    def __init__(self) -> None:
        self.bytes = 0

    async def __call__(self, chunk: bytes) -> None:
        self.bytes += len(chunk)


async def raw_copy(conn: asyncpg.Connection, sink: Sink) -> None:
    columns = ", ".join(StoredEvent.__struct_fields__)
    await conn.copy_from_query(f"SELECT {columns} FROM events ORDER BY position", output=sink)


def long_stream(path: Path, project: str, clip: str, owner: str) -> int:
    """A clip retried by a person until it has 1,000 events (requested, started, failed, requested, ...)."""
    state = ClipState(project_id=project, clip_id=clip)
    lines, now = [], T0
    command: object = Register(source="games/match.mp4", start=1.0, end=3.0)
    while state.version < 1000:
        now += timedelta(seconds=5)
        for event in decide(state, command, Context(now=now, slow_after=1.0)):  # type: ignore[arg-type]
            if state.version >= 1000:
                break
            state = evolve(state, event, now)
            t = type_of(event)
            lines.append(StoredEvent(state.version, stream_name(project, clip), project, clip, state.version, t,
                                     SCHEMA_VERSION[t], encode_data(event), state.status, now))  # fmt: skip
        command = (
            Start(run=state.run, attempt=state.attempt, worker_id="w")
            if state.status == "pending"
            else Fail(run=state.run, attempt=state.attempt, code="source_missing", message="gone", retryable=False)
            if state.status == "running"
            else Retry()
        )
    header = export.Header(
        format=export.FORMAT, format_version=export.FORMAT_VERSION, epoch=uuid.uuid4(), exported_at=T0,
        schema_versions=dict(SCHEMA_VERSION), selection=export.Selection(project_id=project, clip_id=clip),
        range=export.Range(after=0, upto=len(lines), after_cursor=None, upto_cursor=None), count=len(lines),
        owners={project: owner},
    )  # fmt: skip
    path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in [header, *lines]))
    return len(lines)


def _lines(steps) -> list[str]:  # noqa: ANN001
    out = []
    for step in steps:
        out.append(describe(step))
        out.append(explain(step))
    return out


async def replay_db(conn: asyncpg.Connection, project: str, clip: str) -> int:
    return len(_lines(replay([e async for e in read_all(conn, [project], clip)])))


def replay_file(path: Path) -> int:
    return len(_lines(replay(export.read(path)[1])))


def _ratio(a: Sequence[float], b: Sequence[float]) -> str:
    per_round = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(a) / statistics.median(b):.2f} ({min(per_round):.2f}–{max(per_round):.2f})"


async def bench(args: argparse.Namespace) -> str:
    async with scratch_database(args.dsn, "bench") as scratch:
        dsn = scratch.dsn
        conn = await asyncpg.connect(dsn)
        await init_connection(conn)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            log(f"writing a synthetic log of {args.events:,} events …")
            count = write_log(work / "log.jsonl", clips=args.events // 6, project="bench", owner="bench")
            started = time.perf_counter()
            await import_file(conn, work / "log.jsonl")
            log(f"imported {count:,} events in {time.perf_counter() - started:.1f} s")
            stream = long_stream(work / "stream.jsonl", "bench-long", "long", "bench")
            await import_file(conn, work / "stream.jsonl")
            total = count + stream
            await conn.execute("VACUUM ANALYZE events")
            rates: dict[str, list[float]] = {k: [] for k in ("rebuild", "fold", "raw", "export", "copy")}
            cpu: dict[str, list[float]] = {k: [] for k in rates}  # this process's CPU µs per event
            replays: dict[str, list[float]] = {"db": [], "file": []}
            export_bytes = copy_bytes = 0
            for round_ in range(args.rounds):
                await conn.execute("CHECKPOINT")
                t, c = time.perf_counter(), time.process_time()
                done = await rebuild(conn, connect=lambda: asyncpg.connect(dsn), clock=time.monotonic)
                rates["rebuild"].append(done.events / (time.perf_counter() - t))
                cpu["rebuild"].append((time.process_time() - c) / total * 1e6)
                t, c = time.perf_counter(), time.process_time()
                await fold(conn, {}, 0, total)
                rates["fold"].append(total / (time.perf_counter() - t))
                cpu["fold"].append((time.process_time() - c) / total * 1e6)
                t, c = time.perf_counter(), time.process_time()
                read = await raw_read(conn)
                rates["raw"].append(read / (time.perf_counter() - t))
                cpu["raw"].append((time.process_time() - c) / total * 1e6)
                assert read == done.events == total, (read, done.events, total)
                sink = Sink()
                t, c = time.perf_counter(), time.process_time()
                header = await export.write(conn, sink, export.Selection(), now=T0)
                rates["export"].append(header.count / (time.perf_counter() - t))
                cpu["export"].append((time.process_time() - c) / total * 1e6)
                export_bytes = sink.bytes
                sink = Sink()
                t, c = time.perf_counter(), time.process_time()
                await raw_copy(conn, sink)
                rates["copy"].append(total / (time.perf_counter() - t))
                cpu["copy"].append((time.process_time() - c) / total * 1e6)
                copy_bytes = sink.bytes
                t = time.perf_counter()
                assert await replay_db(conn, "bench-long", "long") == 2 * stream
                replays["db"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                assert replay_file(work / "stream.jsonl") == 2 * stream
                replays["file"].append((time.perf_counter() - t) * 1000)
                log(f"round {round_ + 1}/{args.rounds}: rebuild {fmt(rates['rebuild'][-1])}/s, raw "
                    f"{fmt(rates['raw'][-1])}/s, export {fmt(rates['export'][-1])}/s, COPY {fmt(rates['copy'][-1])}/s, "
                    f"replay {fmt(replays['db'][-1])} ms")  # fmt: skip
        await conn.close()
    target = statistics.median(rates["rebuild"]) / statistics.median(rates["raw"]) >= 0.5
    return "\n".join([
        f"Replay tooling over {total:,} events ({args.rounds} rounds, interleaved; median (min–max))",
        "",
        "| case | events/s | ratio to its baseline | bench CPU µs/event |",
        "| --- | --- | --- | --- |",
        f"| rebuild (fold, COPY into a new table, swap) | {cell(rates['rebuild'])} | "
        f"{_ratio(rates['rebuild'], rates['raw'])} of raw read (target 0.5: {'met' if target else 'NOT met'}) | "
        f"{cell(cpu['rebuild'])} |",
        f"| its fold alone (read, decode, `evolve`; nothing written) | {cell(rates['fold'])} | "
        f"{_ratio(rates['fold'], rates['raw'])} of raw read | {cell(cpu['fold'])} |",
        f"| raw read (keyset SELECT + msgspec decode) | {cell(rates['raw'])} | 1 | {cell(cpu['raw'])} |",
        f"| export (JSON lines, {export_bytes / total:.0f} B/event) | {cell(rates['export'])} | "
        f"{_ratio(rates['export'], rates['copy'])} of COPY | {cell(cpu['export'])} |",
        f"| COPY ... TO STDOUT (text, {copy_bytes / total:.0f} B/event) | {cell(rates['copy'])} | 1 | {cell(cpu['copy'])} |",
        "",
        f"Host load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores here: wall-clock "
        "rates drift with other load; the ratios are taken per round)",
        "",
        f"| replay of one {stream:,}-event stream, lines built | ms |",
        "| --- | --- |",
        f"| from the database | {cell(replays['db'])} |",
        f"| from an export file (no database) | {cell(replays['file'])} |",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--quick", action="store_true", help="100,000 events, 2 rounds")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = apply_defaults(parser.parse_args(argv), {"events": 100_000, "rounds": 2}, {"events": 1_000_000, "rounds": 3})
    print(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
