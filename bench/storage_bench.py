"""Per-clip overhead of S3 storage against local storage, in one run on the same clips.

    python -m bench.storage_bench [--dsn ADMIN_DSN] [--quick] [--rounds R] [--clips N] [--mode copy|accurate]

One source, a 1-hour 320x180 H.264/AAC video (tests/s3/support.py `make_long_video`: moov box at the end, a
keyframe a second), is put both in a local media folder and in a bucket of moto's S3 server on localhost
(tests/s3server.py, behind the gate that counts the bytes the store sends). A worker in this process (arq, the
dispatcher, one job at a time: tests/worker_support.py `running_worker`) cuts N clips of 10 s spread over the hour,
one at a time, first with local storage and then with S3 storage (`storage/s3.py`), the order reversed every
other round, on a scratch database next to `--dsn` (dropped at the end) and a private Redis.

Reported, from the log: register → `completed` per clip (the `requested` event's `recorded_at` to the
`completed` event's), median and p90, for each backend and S3 / local; and, for S3, the bytes the store sent per
clip (probe, FFmpeg's range reads, TCP read-ahead) against the source's size. The machine's load varies: compare
the ratio, taken in one run.
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
from pathlib import Path

import msgspec

from bench.common import apply_defaults, fmt
from bench.scratch import scratch_database
from domain.clip import Register
from runtime.embedded import start_redis
from runtime.settings import Settings, find_ffmpeg
from usecases import clips

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CLIP_SECONDS = 10.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


async def one_case(settings: Settings, storage, gate, project: str, starts: list[float], mode: str):  # noqa: ANN001
    from tests.worker_support import running_worker

    latencies: list[float] = []
    read: list[int] = []
    async with running_worker(settings, storage, name=f"bench-{project}") as services:
        for n, start in enumerate(starts):
            clip = f"c{n:03d}"
            gate.reset_counts()
            command = Register(source="games/long.mp4", start=start, end=start + CLIP_SECONDS, mode=mode)
            await clips.handle(services.pool, project, clip, command, services.context)
            deadline = time.monotonic() + 120
            while True:
                rows = await services.pool.fetch(
                    "SELECT type, recorded_at FROM events WHERE stream = $1 ORDER BY version", f"{project}/{clip}"
                )
                types = [r["type"] for r in rows]
                if "extraction.completed" in types:
                    break
                if "extraction.failed" in types or "extraction.timed_out" in types or time.monotonic() > deadline:
                    raise RuntimeError(f"{project}/{clip} did not complete: {types}")
                await asyncio.sleep(0.01)
            requested = next(r["recorded_at"] for r in rows if r["type"] == "extraction.requested")
            completed = next(r["recorded_at"] for r in rows if r["type"] == "extraction.completed")
            latencies.append((completed - requested).total_seconds() * 1000)
            read.append(gate.sent)
    return latencies, read


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.s3.support import make_long_video, s3_storage
    from tests.s3server import S3Server

    root = Path(tempfile.mkdtemp(prefix="cliplog-storage-bench-"))
    ffmpeg = find_ffmpeg(os.environ)
    log("making the 1-hour source ...")
    source = make_long_video(ffmpeg, root / "media" / "games" / "long.mp4", minutes=60)
    size = source.stat().st_size
    server = S3Server(root)
    redis_url, redis = start_redis(root / "redis")
    try:
        async with scratch_database(args.dsn, "storage") as scratch:
            dsn = scratch.dsn
            bucket = "bench"
            server.create_bucket(bucket)
            server.put_object(bucket, "sources/games/long.mp4", source)
            settings = Settings(
                database_url=dsn, redis_url=redis_url, data_dir=root, media_root=root / "media",
                output_root=root / "clips", ffmpeg=ffmpeg, heartbeat_interval=0.5, lease_timeout=30.0,
            )  # fmt: skip
            s3 = s3_storage(server, bucket, timeout=30.0, retry_seconds=5.0)
            results: dict[str, list[float]] = {"local": [], "s3": []}
            read: list[int] = []
            for round_ in range(args.rounds):
                starts = [60.5 + (3400.0 / args.clips) * k + round_ * 7 for k in range(args.clips)]
                cases = [("local", None), ("s3", s3)]
                for backend, storage in cases if round_ % 2 == 0 else cases[::-1]:
                    project = f"{backend}-r{round_}"
                    latencies, sent = await one_case(
                        msgspec.structs.replace(settings, storage=backend, s3_bucket=bucket if backend == "s3" else None),
                        storage, server.gate, project, starts, args.mode,
                    )  # fmt: skip
                    results[backend].extend(latencies)
                    if backend == "s3":
                        read.extend(sent)
                    log(f"round {round_ + 1}/{args.rounds} {backend}: median {fmt(statistics.median(latencies))} ms")
                    shutil.rmtree(root / "clips", ignore_errors=True)
            local, remote = results["local"], results["s3"]
            print(f"\nregister → completed per clip, {args.mode} cuts of {CLIP_SECONDS:g} s from a 1-hour source "
                  f"({size / 1e6:.1f} MB), one at a time, {args.rounds} rounds × {args.clips} clips per backend\n")  # fmt: skip
            print("| backend | median ms | p90 ms |")
            print("| --- | --- | --- |")
            print(f"| local | {fmt(statistics.median(local))} | {fmt(p90(local))} |")
            print(f"| s3 (moto on localhost) | {fmt(statistics.median(remote))} | {fmt(p90(remote))} |")
            print(f"| s3 / local | {fmt(statistics.median(remote) / statistics.median(local))} | "
                  f"{fmt(p90(remote) / p90(local))} |")  # fmt: skip
            print(f"\nbytes the store sent per clip (S3): median {statistics.median(read) / 1e6:.2f} MB, max "
                  f"{max(read) / 1e6:.2f} MB, of a {size / 1e6:.1f} MB source: median "
                  f"{statistics.median(read) / size:.2%}, max {max(read) / size:.2%}")  # fmt: skip
    finally:
        server.stop()
        redis.kill()
        redis.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("CLIPLOG_TEST_DATABASE_URL", DEFAULT_DSN))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--clips", type=int)
    parser.add_argument("--mode", choices=("copy", "accurate"), default="copy")
    asyncio.run(main(apply_defaults(parser.parse_args(), {"rounds": 2, "clips": 5}, {"rounds": 4, "clips": 10})))
