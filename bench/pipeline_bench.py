"""Pipeline benchmark: real `cliplog serve` and `cliplog worker` processes against bare FFmpeg, in one run.

    python -m bench.pipeline_bench [--dsn ADMIN_DSN] [--quick] [--full-detection]

DSN is an admin connection (default postgresql://postgres@127.0.0.1:5432/test). The bench creates a scratch
database `cliplog_pipe_<hex>` next to it, migrates it with `eventlog.migrate.migrate`, creates an API token with
`api.auth.create_token`, starts a private Redis (`runtime.processes.Cluster`, a free port), one `cliplog serve`
and the workers it needs (`python -m api.cli ...`, each in its own session), and removes all of it at the end, even
when it fails. The processes get CLIPLOG_DATABASE_URL, CLIPLOG_REDIS_URL, CLIPLOG_DATA_DIR (a temporary folder
whose media/ holds a generated 60 s 1280x720 source, 25 fps, a keyframe every 2 s, made once per run) and
CLIPLOG_FFMPEG (`runtime.settings.find_ffmpeg`, the binary the bare case runs too).

1. Latency (one worker, concurrency 1, default settings, warmed up by one clip). Interleaved rounds, each with a
   new start offset and new clip ids, the order of the cases rotating from round to round:
   A  bare       `handlers.ffmpeg.cut_command(ffmpeg, source, start, start + 10, "copy", temporary target)` run
                 with `subprocess.run`: what the worker's cut costs with nothing around it.
   B  ws         the feed's WebSocket (`GET /api/events/ws` from the log's head, connected and caught up before
                 the clock starts, as an app's clip list is), then the same POST, until the clip's
                 `extraction.completed` frame arrives.
   C  feed       POST /api/clips/projects/{p}/clips, then `GET /api/events?after=<cursor>&wait=5` (long poll)
                 until the clip's `extraction.completed` arrives; the cursor is taken before the POST.
   D  poll       the same POST, then `GET /api/clips/projects/{p}/clips/{id}` every 2 ms until `completed`.
   (B and C are left out, with the reason printed, when the feed does not answer or does not deliver.)
   Each service clip's events (read from the database afterwards) split its time into segments.
2. Throughput: a batch of clips POSTed at once (16 requests in flight), timed from the first POST until the client
   has seen every clip `completed` (on the feed's socket, connected before the first POST; `--observe feed`: by the
   long poll; without a feed by listing the project every 50 ms), with 1 worker
   process and with 2 worker processes (concurrency 1 each; the second is started for the run and stopped after),
   a fresh project each time, CHECKPOINT before each run. As the machine's ceiling, the same cuts run by bare
   FFmpeg, 1 and 2 at a time. The four cases are interleaved (bare 1, cliplog 1, bare 2, cliplog 2, then the
   reverse order in the next round), and the CPU use of each group of processes is recorded. From it, the CPU
   ceiling of 2 workers: the share of bare FFmpeg 2 at a time that is left when FFmpeg cannot have the CPU the
   service's own processes spend per clip (`_cpu_ceiling`).
3. Detection after SIGKILL: a survivor worker leads the reaper; a victim worker whose CLIPLOG_FFMPEG sleeps 30 s
   before exec'ing FFmpeg takes an attempt; a random delay in [0, heartbeat) after the clip shows `running`, the
   victim's process group gets SIGKILL. Detection is the `recorded_at` of the reaper's `extraction.timed_out` minus
   the kill time; the clip is then retried (after the retry policy's backoff) and completed by the survivor.
   Scaled-down settings by default (heartbeat 1 s, lease 4 s, reaper 1 s), API.md's defaults (5 / 20 / 5) with
   --full-detection.

4. The cost of live progress (`-progress` and its writes): one worker (concurrency 1) whose CLIPLOG_FFMPEG wrapper
   drops `-progress pipe:1` from the arguments while a switch file exists, so the same process, wrapper and
   settings run with and without it; the cases alternate within each round (with/without, then the other way
   round). Latency of a copy cut (CLIP_SECONDS) and of an accurate cut (ACCURATE_SECONDS), observed as in 1, and the
   throughput of a batch (as in 2, one worker); the progress notifications per clip are counted on a LISTEN.
5. Stall detection: a worker with CLIPLOG_STALL_AFTER (5 s scaled, 30 s with --full-detection) whose FFmpeg wrapper,
   once per run, lets the real FFmpeg read at its own pace (`-re`) for 3 s and then freezes it with SIGSTOP (it
   keeps running, and reports nothing more). Measured from the last progress notification of the attempt (LISTEN)
   and from the SIGSTOP (the wrapper's clock) to the `timed_out` (`reason: stalled`) `recorded_at`; the clip is then
   retried with the real FFmpeg.

`--sections 4,5` runs only those (each section starts the workers it needs). Progress goes to stderr; the result
tables go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlencode

import asyncpg
import httpx
import psutil
from arq.connections import ArqRedis
from arq.jobs import Job
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bench.common import apply_defaults, cell, fmt
from bench.scratch import scratch_database
from api.auth import create_token
from eventlog.progress import PROGRESS_CHANNEL
from handlers.ffmpeg import cut_command
from handlers.reactor import job_queue
from runtime import processes
from runtime.settings import find_ffmpeg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SOURCE = "bench/match.mp4"  # relative to the media root
SOURCE_SECONDS = 60
CLIP_SECONDS = 10.0
POLL_EVERY = 0.002  # the latency case C's polling period
LIST_POLL_EVERY = 0.05  # throughput without the feed
POST_CONCURRENCY = 16
USER = "bench"
TARGET_OVERHEAD_MS = 100.0
TARGET_SCALING = 1.8
# Issue 13 (fair dispatch must not cost speed): the feed's overhead over bare FFmpeg, and 1 worker against bare 1.
TARGET_OVERHEAD_DISPATCH_MS = 25.0
TARGET_ONE_WORKER = 0.9
WRAPPER_SLEEP = 30
OTHER_LOAD_WARNING = 0.15  # CPUs of foreign load above which the result says the run was disturbed

SCALED = {"CLIPLOG_HEARTBEAT_INTERVAL": "1", "CLIPLOG_LEASE_TIMEOUT": "4", "CLIPLOG_REAPER_INTERVAL": "1"}
FULL = {"CLIPLOG_HEARTBEAT_INTERVAL": "5", "CLIPLOG_LEASE_TIMEOUT": "20", "CLIPLOG_REAPER_INTERVAL": "5"}
RETRY_BASE = 10.0  # API.md's default CLIPLOG_RETRY_BASE: the first automatic retry waits 5-10 s


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# CPU -----------------------------------------------------------------------------------------------------------


@dataclass
class Cpu:
    host_busy: float = 0.0  # share of all the host's CPUs busy (anything on the machine)
    cores: dict[str, float] = field(default_factory=dict)  # CPUs used per group of processes


class CpuMeter:
    """Host CPU busy share, and CPU seconds per wall second of groups of processes, between start() and stop().

    A group's CPU includes its waited-for children (the bench's bare FFmpeg runs), except the workers', whose
    children (their FFmpeg runs) are counted apart as "ffmpeg". A process that exits during the window is not
    counted (the bench stops none while measuring)."""

    def __init__(self, groups: Callable[[], dict[str, list[psutil.Process]]]) -> None:
        self._groups = groups

    def _sample(self) -> dict[tuple[str, int], float]:
        sample: dict[tuple[str, int], float] = {}
        for group, processes in self._groups().items():
            for process in processes:
                try:
                    t = process.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if group == "workers":
                    sample[(group, process.pid)] = t.user + t.system
                    sample[("ffmpeg", process.pid)] = t.children_user + t.children_system
                else:
                    sample[(group, process.pid)] = t.user + t.system + t.children_user + t.children_system
        return sample

    def start(self) -> None:
        self._host = psutil.cpu_times()
        self._wall = time.perf_counter()
        self._processes = self._sample()

    def stop(self) -> Cpu:
        host = psutil.cpu_times()
        wall = time.perf_counter() - self._wall
        total = sum(host) - sum(self._host)
        idle = (host.idle - self._host.idle) + (getattr(host, "iowait", 0.0) - getattr(self._host, "iowait", 0.0))
        cores: dict[str, float] = {}
        for (group, pid), seconds in self._sample().items():
            cores[group] = cores.get(group, 0.0) + (seconds - self._processes.get((group, pid), 0.0)) / wall
        busy = 1 - idle / total if total > 0 else 0.0
        # Everything else: the kernel's threads, other databases' backends, other people's processes on the host.
        cores["other"] = max(0.0, busy * (psutil.cpu_count() or 1) - sum(cores.values()))
        return Cpu(host_busy=busy, cores=cores)


# A backend's process title: "postgres: [cluster: ]user database host(port) state"
_BACKEND = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\])")


def postgres_processes(database: str) -> list[psutil.Process]:
    """The server's shared processes (postmaster, WAL writer, checkpointer, ...) and the backends connected to
    `database`; other databases' backends (someone else's tests on the same server) count as "other"."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] not in ("postgres", "postmaster"):
            continue
        backend = _BACKEND.match(" ".join(process.info["cmdline"] or []))
        if backend is None or backend.group(1) == database:
            found.append(process)
    return found


# The cluster ---------------------------------------------------------------------------------------------------


class BenchCluster(processes.Cluster):
    """The runtime's cluster (a private Redis; each process in its own session, its log in `root/logs`) on the
    scratch database, with its processes grouped for the CPU meter."""

    def __init__(self, root: Path, database: str, database_url: str, ffmpeg: str) -> None:
        env = {"CLIPLOG_LOG_LEVEL": "INFO"}
        super().__init__(root, database_url=database_url, ffmpeg=ffmpeg, env=env, log_dir=root / "logs")
        self.database = database
        self.api: processes.ApiProcess | None = None

    async def wait_log(self, proc: processes.Process, patterns: Sequence[str], timeout: float = 30) -> None:
        await asyncio.to_thread(proc.wait_log, patterns, timeout)

    async def stop(self, proc: processes.Process, timeout: float = 30) -> None:
        await asyncio.to_thread(proc.stop, timeout)

    def cpu_groups(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {"api": [], "workers": []}
        groups["postgres"] = postgres_processes(self.database)
        for proc in self.processes:
            if proc.running:
                try:
                    groups["api" if proc is self.api else "workers"].append(psutil.Process(proc.pid))
                except psutil.NoSuchProcess:
                    pass
        groups["redis"] = [psutil.Process(self.redis.pid)] if self.redis is not None else []
        groups["client"] = [psutil.Process()]
        return groups


def make_source(ffmpeg: str, target: Path) -> Path:
    """60 s of 1280x720 test pattern at 25 fps with a tone, one keyframe every 2 s exactly (GOP 50, no scene cuts)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(SOURCE_SECONDS), "-c:v", "libx264", "-preset", "ultrafast",
            "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
            "-c:a", "aac", "-shortest", "-f", "mp4", str(target),
        ],
        check=True,
    )  # fmt: skip
    return target


# The HTTP client -----------------------------------------------------------------------------------------------


class ClipFailed(Exception):
    pass


class Client:
    def __init__(self, base_url: str, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ws_url = base_url.replace("http", "ws", 1) + "/api/events/ws"
        self.http = httpx.AsyncClient(base_url=base_url, headers=self.headers, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def register(self, project: str, clip_id: str, start: float, end: float, mode: str = "copy") -> dict:
        response = await self.http.post(
            f"/api/clips/projects/{project}/clips",
            json={"clip_id": clip_id, "source": SOURCE, "start": start, "end": end, "mode": mode},
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"registering {project}/{clip_id}: {response.status_code} {response.text[:300]}")
        return response.json()

    async def clip(self, project: str, clip_id: str) -> dict:
        response = await self.http.get(f"/api/clips/projects/{project}/clips/{clip_id}")
        response.raise_for_status()
        return response.json()

    async def clips(self, project: str) -> list[dict]:
        response = await self.http.get(f"/api/clips/projects/{project}/clips")
        response.raise_for_status()
        return response.json()

    async def events(self, after: str, wait: float = 0.0, limit: int = 1000) -> dict:
        response = await self.http.get("/api/events", params={"after": after, "wait": wait, "limit": limit})
        response.raise_for_status()
        return response.json()

    async def head(self) -> str:
        return (await self.events("latest", 0, 1))["next_cursor"]

    async def socket(self) -> ClientConnection:
        """The feed's WebSocket from the log's head, once its (empty) backlog is sent: subscribed before the clips
        are registered, as an app's clip list is."""
        ws = await connect(
            f"{self.ws_url}?{urlencode({'after': await self.head()})}", additional_headers=self.headers,
            compression=None, proxy=None,
        )
        try:
            async with asyncio.timeout(10):
                while json.loads(await ws.recv()).get("type") != "caught_up":
                    pass
        except BaseException:
            await ws.close()
            raise
        return ws


def _check_failed(clip: dict) -> None:
    if clip["status"] in ("failed", "retrying"):
        raise ClipFailed(f"clip {clip['project_id']}/{clip['clip_id']} is {clip['status']}: {clip.get('last_error')}")


async def until_completed_poll(client: Client, project: str, clip_id: str, timeout: float) -> float:
    """GET the clip every POLL_EVERY s; the wall time (time.time) at which `completed` was seen."""
    deadline = time.monotonic() + timeout
    while True:
        clip = await client.clip(project, clip_id)
        if clip["status"] == "completed":
            return time.time()
        _check_failed(clip)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{project}/{clip_id} not completed within {timeout:g} s (status {clip['status']})")
        await asyncio.sleep(POLL_EVERY)


async def until_completed_ws(ws: ClientConnection, project: str, clip_ids: set[str], timeout: float) -> float:
    """Read the feed's socket until every clip in `clip_ids` has `extraction.completed`; the wall time (time.time)
    at which the last one arrived."""
    remaining = set(clip_ids)
    async with asyncio.timeout(timeout):
        async for message in ws:
            now = time.time()
            sent = json.loads(message)
            event = sent.get("event", {})  # {"type": "event", "event": {...}}; pings and progress reports have none
            if event.get("project_id") != project or event.get("clip_id") not in remaining:
                continue
            if event["type"] == "extraction.completed":
                remaining.discard(event["clip_id"])
                if not remaining:
                    return now
            elif event["type"] in ("extraction.failed", "extraction.timed_out"):
                raise ClipFailed(f"{project}/{event['clip_id']}: {event['type']} {event['data']}")
    raise ClipFailed(f"the feed's socket closed with {len(remaining)} clip(s) of {project} not completed")


async def until_completed_feed(
    client: Client, project: str, clip_ids: set[str], cursor: str, timeout: float
) -> float:
    """Long-poll the feed from `cursor` until every clip in `clip_ids` has `extraction.completed`; the wall time
    (time.time) at which the last one arrived."""
    remaining = set(clip_ids)
    deadline = time.monotonic() + timeout
    while True:
        page = await client.events(cursor, wait=5)
        now = time.time()
        for event in page["events"]:
            if event["project_id"] != project or event["clip_id"] not in remaining:
                continue
            if event["type"] == "extraction.completed":
                remaining.discard(event["clip_id"])
            elif event["type"] in ("extraction.failed", "extraction.timed_out"):
                raise ClipFailed(f"{project}/{event['clip_id']}: {event['type']} {event['data']}")
        if not remaining:
            return now
        cursor = page["next_cursor"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(remaining)} clip(s) of {project} not completed within {timeout:g} s")


async def until_all_completed_list(client: Client, project: str, clip_ids: set[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        clips = {c["clip_id"]: c for c in await client.clips(project) if c["clip_id"] in clip_ids}
        for clip in clips.values():
            _check_failed(clip)
        if len(clips) == len(clip_ids) and all(c["status"] == "completed" for c in clips.values()):
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"clips of {project} not completed within {timeout:g} s")
        await asyncio.sleep(LIST_POLL_EVERY)


# The database side ---------------------------------------------------------------------------------------------


async def clip_events(db: asyncpg.Connection, project: str, clip_id: str) -> list[dict]:
    rows = await db.fetch(
        "SELECT type, recorded_at, data::text AS data FROM events WHERE project_id = $1 AND clip_id = $2 "
        "ORDER BY position",
        project,
        clip_id,
    )
    return [{"type": r["type"], "at": r["recorded_at"].timestamp(), "data": json.loads(r["data"])} for r in rows]


def first(events: list[dict], kind: str, after: int = 0) -> tuple[int, dict]:
    for i in range(after, len(events)):
        if events[i]["type"] == f"extraction.{kind}":
            return i, events[i]
    raise LookupError(f"no extraction.{kind} in {[e['type'] for e in events]}")


# Results -------------------------------------------------------------------------------------------------------


@dataclass
class LatencyRun:
    case: str
    seconds: float
    cpu: Cpu
    segments: dict[str, float] = field(default_factory=dict)  # service runs: seconds per segment


@dataclass
class ThroughputRun:
    parallel: int  # worker processes, or bare FFmpeg runs at a time
    clips: int
    seconds: float  # service: first POST -> the client has seen every clip completed; bare: all cuts done
    cpu: Cpu
    register_seconds: float = math.nan  # first POST -> every POST answered
    server_seconds: float = math.nan  # first `requested` recorded -> last `completed` recorded
    per_worker: list[int] = field(default_factory=list)
    attempt: float = math.nan  # median `started` -> `completed` recorded (bare: median cut)
    produce: float = math.nan  # median produce_clip (`elapsed_seconds`)
    gap: float = math.nan  # median `completed` recorded -> the same worker's next `started` recorded

    @property
    def rate(self) -> float:
        return self.clips / self.seconds


@dataclass
class DetectionRun:
    lease_age: float  # kill time - the lease's last renewal
    detection: float  # timed_out recorded_at - kill time
    detected_by: str
    retry_due: float  # the retry's not_before - kill time
    completed: float  # completed recorded_at - kill time
    tries: int  # clips registered until the victim took one


def pctl(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]




def _cores(cpus: Sequence[Cpu], groups: Sequence[str]) -> str:
    return " · ".join(f"{statistics.median(c.cores.get(g, 0.0) for c in cpus):.2f}" for g in groups)


# 1. Latency ----------------------------------------------------------------------------------------------------

LATENCY_SEGMENTS = [
    ("post", "POST sent → `requested` recorded (API: auth, checks, decide)"),
    ("pickup", "`requested` recorded → `started` recorded"),
    ("react", "  `requested` commit + NOTIFY, reactor reads the log, enqueues (→ arq `enqueue_time`)"),
    ("queue", "  in the Redis queue until the worker polls (every 20 ms) (→ arq `start_time`)"),
    ("load", "  job loads the clip, reads it again and decides `started`"),
    ("run", "`started` recorded → `completed` recorded (the attempt)"),
    ("commit", "  `started` commit (with the lease) and NOTIFY, `completed`'s read and decide"),
    ("produce", "  produce_clip (`elapsed_seconds`: source info, cut, validate the output, fsync, rename)"),
    ("bare", "    bare FFmpeg (same rounds), for comparison"),
    ("fsync", "    fsync of the bare FFmpeg's output file (not part of the bare time)"),
    ("seen", "`completed` recorded → the client has it (commit, NOTIFY, then the feed or the next poll)"),
    ("answer", "POST answered, seen from the client"),
]  # fmt: skip


def offset(i: int) -> float:
    """Start offsets spread over the source, a new one every round (the clip is 10 s of a 60 s source)."""
    return round(1.0 + (i * 7.7) % (SOURCE_SECONDS - CLIP_SECONDS - 2), 2)


async def arq_times(db: asyncpg.Connection, redis: ArqRedis, project: str, clip_id: str) -> tuple[float, float] | None:
    """(enqueue_time, start_time) of the clip's first job, from the result arq keeps in Redis (ms precision);
    None when arq has not stored it within a second."""
    queue = await job_queue(db)
    job = Job(queue.job_id(project, clip_id, 1, 1), redis, _queue_name=queue.name)
    for _ in range(100):
        info = await job.result_info()
        if info is not None:
            return info.enqueue_time.timestamp(), info.start_time.timestamp()
        await asyncio.sleep(0.01)
    return None


@dataclass
class Sighting:
    """One service clip as the client saw it (wall-clock times, comparable with the events' `recorded_at`)."""

    project: str
    clip_id: str
    posted: float  # time.time() just before the POST
    answered: float  # seconds until the POST's answer
    seen: float  # time.time() when the client had the clip `completed`

    @property
    def seconds(self) -> float:
        return self.seen - self.posted


async def register_and_wait(
    client: Client, project: str, clip_id: str, start: float, observe: str, mode: str = "copy",
    seconds: float = CLIP_SECONDS,
) -> Sighting:  # fmt: skip
    if observe == "ws":
        async with await client.socket() as ws:
            t0_wall, t0 = time.time(), time.perf_counter()
            await client.register(project, clip_id, start, start + seconds, mode)
            answered = time.perf_counter() - t0
            seen_wall = await until_completed_ws(ws, project, {clip_id}, timeout=60)
        return Sighting(project, clip_id, t0_wall, answered, seen_wall)
    cursor = await client.head() if observe == "feed" else ""
    t0_wall, t0 = time.time(), time.perf_counter()
    await client.register(project, clip_id, start, start + seconds, mode)
    answered = time.perf_counter() - t0
    if observe == "feed":
        seen_wall = await until_completed_feed(client, project, {clip_id}, cursor, timeout=60)
    else:
        seen_wall = await until_completed_poll(client, project, clip_id, timeout=60)
    return Sighting(project, clip_id, t0_wall, answered, seen_wall)


async def segments_of(db: asyncpg.Connection, redis: ArqRedis, sighting: Sighting) -> dict[str, float]:
    """The clip's time split by its events' `recorded_at` and arq's enqueue and start times (seconds)."""
    project, clip_id, t0_wall, seen_wall = sighting.project, sighting.clip_id, sighting.posted, sighting.seen
    events = await clip_events(db, project, clip_id)
    _, requested = first(events, "requested")
    _, started = first(events, "started")
    _, completed = first(events, "completed")
    produce = float(completed["data"].get("elapsed_seconds", math.nan))
    segments = {
        "post": requested["at"] - t0_wall,
        "pickup": started["at"] - requested["at"],
        "run": completed["at"] - started["at"],
        "commit": completed["at"] - started["at"] - produce,
        "produce": produce,
        "seen": seen_wall - completed["at"],
        "answer": sighting.answered,
    }
    times = await arq_times(db, redis, project, clip_id)
    if times is not None:
        enqueued, began = times
        segments |= {"react": enqueued - requested["at"], "queue": began - enqueued, "load": started["at"] - began}
    return segments


def bare_cut(ffmpeg: str, source: Path, start: float, scratch: Path) -> tuple[float, dict[str, float]]:
    """The cut alone; then, untimed, the fsync of its output (which the worker does before publishing a clip)."""
    target = scratch / f"bare-{secrets.token_hex(4)}.mp4"
    command = cut_command(ffmpeg, source, start, start + CLIP_SECONDS, "copy", target)
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync = time.perf_counter() - t1
    target.unlink(missing_ok=True)
    return seconds, {"fsync": fsync}


async def probe_feed(client: Client, project: str, observe: str, clip_id: str, start: float) -> str | None:
    """None when `observe` (the long poll, "feed", or the socket, "ws") delivers a clip's completion; else why not."""
    try:
        sighting = await register_and_wait(client, project, clip_id, start, observe)
    except (httpx.HTTPError, KeyError, ValueError, TimeoutError, OSError, WebSocketException, ClipFailed,
            RuntimeError) as error:  # fmt: skip
        return f"{type(error).__name__}: {str(error)[:200]}"
    log(f"feed probe: {OBSERVED_BY[observe]} delivered the completion in {sighting.seconds * 1000:.0f} ms")
    return None


async def run_latency(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, redis: ArqRedis, source: Path, rounds: int,
    observers: list[str],
) -> dict[str, list[LatencyRun]]:  # fmt: skip
    scratch = cluster.root / "bare"
    scratch.mkdir(exist_ok=True)
    meter = CpuMeter(cluster.cpu_groups)
    project = "latency"
    cases = ["bare", *observers]
    runs: dict[str, list[LatencyRun]] = {c: [] for c in cases}
    rng = random.Random(1128)
    bare_cut(cluster.ffmpeg, source, 5.0, scratch)  # warm the binary and the page cache
    for r in range(rounds):
        start = offset(r)
        await db.execute("CHECKPOINT")
        order = cases[r % len(cases):] + cases[: r % len(cases)]
        line = []
        for case in order:
            # Let the worker finish its job's bookkeeping; a random pause so that the POST does not fall at the
            # same phase of the worker's 20 ms queue polling every time.
            await asyncio.sleep(rng.uniform(0.1, 0.14))
            meter.start()
            if case == "bare":
                seconds, segments = bare_cut(cluster.ffmpeg, source, start, scratch)
                cpu = meter.stop()
            else:
                sighting = await register_and_wait(client, project, f"r{r}-{case}", start, case)
                cpu = meter.stop()
                seconds, segments = sighting.seconds, await segments_of(db, redis, sighting)
            runs[case].append(LatencyRun(case, seconds, cpu, segments))
            line.append(f"{case} {seconds * 1000:6.1f} ms (other load {cpu.cores.get('other', 0.0):.2f})")
        log(f"latency round {r + 1}/{rounds} start {start:5.2f} s: " + ", ".join(line))
    return runs


def render_latency(runs: dict[str, list[LatencyRun]], observers: list[str], notes: dict[str, str]) -> list[str]:
    labels = {
        "bare": "bare FFmpeg (`cut_command`, `subprocess.run`)",
        "ws": "cliplog, client follows the WebSocket `GET /api/events/ws` (connected before the POST)",
        "feed": "cliplog, client long-polls `GET /api/events?wait=5`",
        "poll": f"cliplog, client polls `GET …/clips/{{id}}` every {POLL_EVERY * 1000:g} ms",
    }
    lines = [
        "| case | median ms | min–max ms | p90 ms | host CPU busy | other CPUs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in ["bare", *observers]:
        ms = [r.seconds * 1000 for r in runs[case]]
        busy = statistics.median(r.cpu.host_busy for r in runs[case])
        lines.append(
            f"| {labels[case]} | {fmt(statistics.median(ms))} | {fmt(min(ms))}–{fmt(max(ms))} | "
            f"{fmt(pctl(ms, 0.9))} | {busy:.0%} | {_cores([r.cpu for r in runs[case]], ['other'])} |"
        )
    bare = statistics.median(r.seconds for r in runs["bare"]) * 1000
    for case in observers:
        service = statistics.median(r.seconds for r in runs[case]) * 1000
        per_round = [(a.seconds - b.seconds) * 1000 for a, b in zip(runs[case], runs["bare"])]
        overhead = service - bare
        verdict = "met" if overhead <= TARGET_OVERHEAD_MS else "NOT met"
        strict = "met" if overhead <= TARGET_OVERHEAD_DISPATCH_MS else "NOT met"
        lines.append(
            f"| **overhead, {case}** (median service − median bare) | **{fmt(overhead)}** | per round "
            f"{fmt(min(per_round))}–{fmt(max(per_round))} | target ≤ {TARGET_OVERHEAD_MS:g} ms: {verdict}; "
            f"≤ {TARGET_OVERHEAD_DISPATCH_MS:g} ms (issue 13): {strict} | | |"
        )
    lines.append("")
    lines.append(
        "Host CPU busy: median share of all the host's CPUs busy during a case. Other CPUs: what neither the "
        "cluster, its PostgreSQL database nor this client used (kernel, other processes on the host); well above "
        "0 means someone else's load disturbed the run."
    )
    for observer, note in notes.items():
        lines.append("")
        lines.append(f"Not measured: {OBSERVED_BY[observer]} ({note}).")
    lines += ["", "Where the service time goes (medians; segments from the clip's `recorded_at` and the client's "
              "clock, same host):", ""]  # fmt: skip
    header = "| segment | " + " | ".join(f"{c} ms" for c in observers) + " |"
    lines += [header, "|---|" + "---:|" * len(observers)]
    for key, label in LATENCY_SEGMENTS:
        cells = []
        for case in observers:
            if key == "bare":
                values = [r.seconds * 1000 for r in runs["bare"]]
            elif key == "fsync":
                values = [r.segments["fsync"] * 1000 for r in runs["bare"]]
            else:
                values = [r.segments[key] * 1000 for r in runs[case] if not math.isnan(r.segments.get(key, math.nan))]
            cells.append(cell(values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [fmt(statistics.median(r.seconds for r in runs[c]) * 1000) for c in observers]
    lines.append("| total (register → seen `completed`) | " + " | ".join(totals) + " |")
    return lines


# 2. Throughput -------------------------------------------------------------------------------------------------


def batch_start(i: int) -> float:
    return round((i * 3.1) % (SOURCE_SECONDS - CLIP_SECONDS - 1), 2)


async def bare_batch(cluster: BenchCluster, source: Path, batch: int, parallel: int) -> ThroughputRun:
    """The machine's ceiling: the same cuts as a service batch, `parallel` bare FFmpeg processes at a time."""
    scratch = cluster.root / "bare-batch"
    scratch.mkdir(exist_ok=True)
    gate = asyncio.Semaphore(parallel)
    cuts: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            start = batch_start(i)
            target = scratch / f"c{i:03d}.mp4"
            command = cut_command(cluster.ffmpeg, source, start, start + CLIP_SECONDS, "copy", target)
            t0 = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, stderr = await process.communicate()
            cuts.append(time.perf_counter() - t0)
            if process.returncode != 0:
                raise RuntimeError(f"bare FFmpeg exited with {process.returncode}: {stderr.decode()[-300:]}")

    meter = CpuMeter(cluster.cpu_groups)
    meter.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(batch)))
    seconds = time.perf_counter() - t0
    cpu = meter.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return ThroughputRun(parallel, batch, seconds, cpu, attempt=statistics.median(cuts))


async def throughput_run(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, workers: int, batch: int, project: str, observe: str
) -> ThroughputRun:
    extra: processes.Process | None = None
    if workers == 2:
        extra = cluster.worker(f"b-{project}", concurrency=1)
        await cluster.wait_log(extra, [r"worker \S+ started"])
        await asyncio.sleep(0.3)  # its polling loop starts right after that line
    try:
        await db.execute("CHECKPOINT")
        await asyncio.sleep(0.2)
        ids = [f"c{i:03d}" for i in range(batch)]
        cursor = await client.head() if observe == "feed" else ""
        async with contextlib.AsyncExitStack() as stack:
            ws = await stack.enter_async_context(await client.socket()) if observe == "ws" else None
            meter = CpuMeter(cluster.cpu_groups)
            meter.start()
            t0_wall, t0 = time.time(), time.perf_counter()
            gate = asyncio.Semaphore(POST_CONCURRENCY)

            async def post(i: int, clip_id: str) -> None:
                async with gate:
                    start = batch_start(i)
                    await client.register(project, clip_id, start, start + CLIP_SECONDS)

            async def register_all() -> float:
                await asyncio.gather(*(post(i, c) for i, c in enumerate(ids)))
                return time.perf_counter() - t0

            timeout = 30 + batch * 2.0
            if observe == "poll":
                register_seconds = await register_all()
                seen_wall = await until_all_completed_list(client, project, set(ids), timeout)
            else:
                watch = (until_completed_ws(ws, project, set(ids), timeout) if ws is not None
                         else until_completed_feed(client, project, set(ids), cursor, timeout))  # fmt: skip
                async with asyncio.TaskGroup() as group:  # a failed POST ends the watch, a failed watch the POSTs
                    registering, watching = group.create_task(register_all()), group.create_task(watch)
                register_seconds, seen_wall = registering.result(), watching.result()
            cpu = meter.stop()
        seconds = seen_wall - t0_wall
        span = await db.fetchrow(
            "SELECT min(recorded_at) FILTER (WHERE type = 'extraction.requested') AS first, "
            "max(recorded_at) FILTER (WHERE type = 'extraction.completed') AS last FROM events WHERE project_id = $1",
            project,
        )
        attempts = await db.fetch(
            "SELECT s.data::jsonb->>'worker_id' AS worker, s.recorded_at AS started, c.recorded_at AS completed, "
            "(c.data::jsonb->>'elapsed_seconds')::float8 AS produce FROM events s JOIN events c "
            "ON c.project_id = s.project_id AND c.clip_id = s.clip_id AND c.type = 'extraction.completed' "
            "WHERE s.project_id = $1 AND s.type = 'extraction.started' ORDER BY s.recorded_at",
            project,
        )
        by_worker: dict[str, list[asyncpg.Record]] = {}
        for a in attempts:
            by_worker.setdefault(a["worker"], []).append(a)
        gaps = [
            (b["started"] - a["completed"]).total_seconds()
            for rows in by_worker.values()
            for a, b in zip(rows, rows[1:])
        ]
        shutil.rmtree(cluster.root / "clips" / project, ignore_errors=True)  # ~8 MB a clip
        return ThroughputRun(
            parallel=workers,
            clips=batch,
            seconds=seconds,
            register_seconds=register_seconds,
            server_seconds=(span["last"] - span["first"]).total_seconds(),
            per_worker=sorted((len(rows) for rows in by_worker.values()), reverse=True),
            attempt=statistics.median((a["completed"] - a["started"]).total_seconds() for a in attempts),
            produce=statistics.median(a["produce"] for a in attempts),
            gap=statistics.median(gaps) if gaps else math.nan,
            cpu=cpu,
        )
    finally:
        if extra is not None:
            await cluster.stop(extra)


CPU_GROUPS = ("api", "workers", "ffmpeg", "postgres", "redis", "client", "other")


OBSERVED_BY = {"ws": "the feed's WebSocket", "feed": "the long-poll feed", "poll": "listing the project"}
THROUGHPUT_CASES = {
    "svc1": "cliplog, 1 worker process × concurrency 1",
    "svc2": "cliplog, 2 worker processes × concurrency 1",
    "bare1": "bare FFmpeg, 1 at a time (ceiling)",
    "bare2": "bare FFmpeg, 2 at a time (ceiling)",
}


def _median_ms(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    return fmt(statistics.median(values) * 1000) if values else "—"


def _ratio(numerators: Sequence[ThroughputRun], denominators: Sequence[ThroughputRun]) -> tuple[float, str]:
    """Ratio of the median rates, and the per-round ratios."""
    ratio = statistics.median(r.rate for r in numerators) / statistics.median(r.rate for r in denominators)
    per_round = ", ".join(f"{a.rate / b.rate:.2f}" for a, b in zip(numerators, denominators))
    return ratio, per_round


def render_throughput(runs: dict[str, list[ThroughputRun]], batch: int) -> list[str]:
    lines = [
        f"| case | clips/s | {batch} clips, s | all POSTs answered, s | server: first `requested` → last "
        "`completed`, s | attempts per worker | per attempt: started → completed (produce_clip) ms; bare: one cut "
        f"| worker idle between attempts ms | host CPU busy | CPUs: {' · '.join(CPU_GROUPS)} |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for case, label in THROUGHPUT_CASES.items():
        rs = runs[case]
        service = case.startswith("svc")
        split = "; ".join("/".join(str(n) for n in r.per_worker) for r in rs) if service else "—"
        attempt = _median_ms([r.attempt for r in rs]) + (f" ({_median_ms([r.produce for r in rs])})" if service else "")
        lines.append(
            f"| {label} | {cell([r.rate for r in rs])} | {cell([r.seconds for r in rs])} | "
            f"{cell([r.register_seconds for r in rs]) if service else '—'} | "
            f"{cell([r.server_seconds for r in rs]) if service else '—'} | {split} | {attempt} | "
            f"{_median_ms([r.gap for r in rs])} | "
            f"{statistics.median(r.cpu.host_busy for r in rs):.0%} | {_cores([r.cpu for r in rs], CPU_GROUPS)} |"
        )
    ratio, per_round = _ratio(runs["svc2"], runs["svc1"])
    verdict = "met" if ratio >= TARGET_SCALING else "NOT met"
    bare_ratio, bare_per_round = _ratio(runs["bare2"], runs["bare1"])
    eff1, eff1_rounds = _ratio(runs["svc1"], runs["bare1"])
    eff2, eff2_rounds = _ratio(runs["svc2"], runs["bare2"])
    lines += [
        "",
        "| ratio | median | per round |",
        "|---|---:|---|",
        f"| **cliplog 2 workers / 1 worker** (target ≥ {TARGET_SCALING:g}: {verdict}) | **{ratio:.2f}** | "
        f"{per_round} |",
        f"| bare FFmpeg 2 at a time / 1 at a time (what these CPUs allow) | {bare_ratio:.2f} | {bare_per_round} |",
        f"| cliplog 1 worker / bare FFmpeg 1 at a time (target ≥ {TARGET_ONE_WORKER:g}: "
        f"{'met' if eff1 >= TARGET_ONE_WORKER else 'NOT met'}) | {eff1:.2f} | {eff1_rounds} |",
        f"| cliplog 2 workers / bare FFmpeg 2 at a time | {eff2:.2f} | {eff2_rounds} |",
        f"| (cliplog 2 / 1) / (bare 2 / 1) (target ≥ 0.95) | {ratio / bare_ratio:.2f} | |",
    ]
    lines += _cpu_ceiling(runs, eff1)
    per_clip = []
    for case in ("svc1", "svc2", "bare1", "bare2"):
        groups = CLIPLOG_GROUPS + ("ffmpeg",) if case.startswith("svc") else ("client",)
        cells = ", ".join(f"{g} {_cpu_ms(runs[case], (g,)):.1f}" for g in groups)
        per_clip.append(f"{THROUGHPUT_CASES[case]}: {cells}")
    lines += ["", "CPU per clip, ms (median over the rounds; bare: its FFmpeg runs): " + "; ".join(per_clip) + "."]
    return lines


CLIPLOG_GROUPS = ("api", "workers", "postgres", "redis")  # cliplog's own processes, its FFmpeg runs apart


def _cpu_ms(runs: Sequence[ThroughputRun], groups: Sequence[str]) -> float:
    """The median over the runs of the CPU time `groups` spent per clip, ms."""
    return statistics.median(cpu_per_clip(r, groups) for r in runs) * 1000


def _cpu_ceiling(runs: dict[str, list[ThroughputRun]], one_worker_share: float) -> list[str]:
    """What the host's CPUs allow 2 workers whatever the service's scheduling, when the 2-at-a-time runs keep them
    busy: FFmpeg cannot have the CPU time the service's own processes spend per clip, so cliplog 2 workers reach at
    most ffmpeg / (ffmpeg + service) of bare FFmpeg 2 at a time (ffmpeg: the CPU per cut of the bench process
    running bare FFmpeg 2 at a time, its FFmpeg children and its own spawning; the bench client's CPU in the cliplog
    runs left out, which only raises the ceiling). Divided by the 1-worker share of bare, that bounds (cliplog 2 / 1)
    / (bare 2 / 1). Both busy shares are printed: the bound assumes bare FFmpeg 2 at a time uses the CPUs at least
    as fully as cliplog's 2 workers do."""
    ffmpeg, service = _cpu_ms(runs["bare2"], ("client",)), _cpu_ms(runs["svc2"], CLIPLOG_GROUPS)
    busy = {case: statistics.median(r.cpu.host_busy for r in runs[case]) for case in ("bare2", "svc2")}
    ceiling = ffmpeg / (ffmpeg + service)
    # the service's CPU per clip under which 0.95 would fit: ffmpeg / (ffmpeg + s) >= 0.95 * one_worker_share
    allowed = ffmpeg * (1 / (0.95 * one_worker_share) - 1)
    need = (f"0.95 would need the service under {allowed:.1f} ms of CPU per clip" if allowed > 0
            else "0.95 fits whatever the service costs in this run (1 worker above 1/0.95 of bare)")  # fmt: skip
    return [
        "",
        f"CPU ceiling (host CPUs busy: bare FFmpeg 2 at a time {busy['bare2']:.0%}, cliplog 2 workers "
        f"{busy['svc2']:.0%}): the service's own processes ({' + '.join(CLIPLOG_GROUPS)}; PostgreSQL's shared "
        f"processes serve the server's other databases too) spent {service:.1f} ms of CPU per clip with 2 workers, "
        f"bare FFmpeg {ffmpeg:.1f} ms per cut 2 at a time, so cliplog 2 workers / bare 2 at a time is at most "
        f"{ceiling:.2f} here, and (cliplog 2 / 1) / (bare 2 / 1) at most {ceiling / one_worker_share:.2f}; {need}.",
    ]


# 3. Detection after SIGKILL -----------------------------------------------------------------------------------


async def victim_running(
    client: Client, db: asyncpg.Connection, project: str, pid: int, timeout: float = 20
) -> tuple[str, int]:
    """Register two clips at a time (the survivor takes one, the victim the other) until one is running on the
    victim; return its id and the number of clips registered."""
    registered: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [f"c{len(registered) + k}" for k in range(2)]
        await asyncio.gather(*(client.register(project, c, 20.0, 20.0 + CLIP_SECONDS) for c in pending))
        registered += pending
        while time.monotonic() < deadline:
            clips = [await client.clip(project, c) for c in pending]
            for clip in clips:
                if clip["status"] == "running":
                    events = await clip_events(db, project, clip["clip_id"])
                    _, started = first(events, "started")
                    if f":{pid}:" in started["data"].get("worker_id", ""):
                        return clip["clip_id"], len(registered)
            if all(c["status"] == "completed" for c in clips):
                break  # the survivor took both: try again
            await asyncio.sleep(0.01)
    raise TimeoutError(f"the victim worker (pid {pid}) took no attempt within {timeout:g} s")


async def detection_run(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, env: dict[str, str], wrapper: str,
    k: int, rng: random.Random,
) -> DetectionRun:  # fmt: skip
    heartbeat = float(env["CLIPLOG_HEARTBEAT_INTERVAL"])
    lease = float(env["CLIPLOG_LEASE_TIMEOUT"])
    reaper = float(env["CLIPLOG_REAPER_INTERVAL"])
    victim = cluster.worker(f"victim-{k}", concurrency=1, **{**env, "CLIPLOG_FFMPEG": wrapper})
    try:
        await cluster.wait_log(victim, [r"worker \S+ started"])
        await asyncio.sleep(0.3)
        project = f"detect{k}"
        clip_id, tries = await victim_running(client, db, project, victim.pid)
        await asyncio.sleep(rng.uniform(0, heartbeat))
        killed_at = time.time()
        victim.kill()
    finally:
        await cluster.stop(victim)
    renewed = await db.fetchval(
        "SELECT renewed_at FROM leases WHERE project_id = $1 AND clip_id = $2", project, clip_id
    )
    deadline = time.monotonic() + lease + 2 * reaper + RETRY_BASE + 60
    while True:
        clip = await client.clip(project, clip_id)
        if clip["status"] == "completed":
            break
        if clip["status"] == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"{project}/{clip_id} after the kill: {clip['status']} {clip.get('last_error')}")
        await asyncio.sleep(0.1)
    events = await clip_events(db, project, clip_id)
    i, timed_out = first(events, "timed_out")
    j, retry = first(events, "requested", i)
    _, completed = first(events, "completed", j)
    not_before = retry["data"].get("not_before")
    due = datetime.fromisoformat(not_before).timestamp() if not_before else retry["at"]
    return DetectionRun(
        lease_age=killed_at - renewed.timestamp() if renewed else math.nan,
        detection=timed_out["at"] - killed_at,
        detected_by=str(timed_out["data"].get("detected_by")),
        retry_due=due - killed_at,
        completed=completed["at"] - killed_at,
        tries=tries,
    )


async def run_detection(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, env: dict[str, str], runs: int
) -> list[DetectionRun]:
    wrapper = cluster.wrapper("slow-ffmpeg", f'sleep {WRAPPER_SLEEP}\nexec "$REAL" "$@"\n')
    survivor = cluster.worker("survivor", concurrency=1, **env)
    await cluster.wait_log(survivor, [r"worker \S+ started", r"(reactor|dispatcher): leading", r"reaper: leading"], timeout=60)
    rng = random.Random(20261128)
    results = []
    for k in range(runs):
        run = await detection_run(cluster, client, db, env, wrapper, k, rng)
        results.append(run)
        log(
            f"detection run {k + 1}/{runs}: lease age at kill {run.lease_age:.2f} s, timed_out (by {run.detected_by}) "
            f"{run.detection:.2f} s after the kill, retry due at +{run.retry_due:.2f} s, completed at "
            f"+{run.completed:.2f} s ({run.tries} clips registered)"
        )
    await cluster.stop(survivor)
    return results


def render_detection(runs: list[DetectionRun], env: dict[str, str], full: bool) -> list[str]:
    heartbeat = float(env["CLIPLOG_HEARTBEAT_INTERVAL"])
    lease = float(env["CLIPLOG_LEASE_TIMEOUT"])
    reaper = float(env["CLIPLOG_REAPER_INTERVAL"])
    lines = [
        f"Configuration: CLIPLOG_HEARTBEAT_INTERVAL={heartbeat:g}, CLIPLOG_LEASE_TIMEOUT={lease:g}, "
        f"CLIPLOG_REAPER_INTERVAL={reaper:g} ({'API.md defaults, --full-detection' if full else 'scaled down'}); "
        f"CLIPLOG_RETRY_BASE={RETRY_BASE:g} (default). Expected detection: lease timeout − lease age at the kill "
        f"+ up to one reaper interval, at most about {lease + reaper:g} s.",
        "",
        "| measurement (s after the SIGKILL) | median (min–max) | per run |",
        "|---|---:|---|",
    ]

    def row(label: str, values: list[float]) -> None:
        lines.append(f"| {label} | {cell(values)} | {', '.join(fmt(v) for v in values)} |")

    row("lease age at the kill (s since the last renewal)", [r.lease_age for r in runs])
    row("**detection**: `extraction.timed_out` recorded", [r.detection for r in runs])
    row("reaper's delay: detection − (lease timeout − lease age)", [r.detection - (lease - r.lease_age) for r in runs])
    row("retry due (`not_before` of the automatic retry)", [r.retry_due for r in runs])
    row("clip `completed` by the survivor", [r.completed for r in runs])
    by = sorted({r.detected_by for r in runs})
    lines.append("")
    lines.append(f"`detected_by` of the `timed_out` events: {', '.join(by)} ({len(runs)} runs).")
    return lines


# 4. The cost of progress --------------------------------------------------------------------------------------

ACCURATE_SECONDS = 4.0
# Drops `-progress pipe:1` while $STATE/off exists (POSIX sh: the loop walks the original arguments while `set --`
# rebuilds the list), so one worker runs with and without it.
PROGRESS_TOGGLE = """
if [ -e "$STATE/off" ]; then
  skip=0
  for arg in "$@"; do
    shift
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$arg" = "-progress" ]; then skip=1; continue; fi
    set -- "$@" "$arg"
  done
fi
exec "$REAL" "$@"
"""
PROGRESS_CASES = {
    "copy": f"latency, {CLIP_SECONDS:g} s copy cut (register → `completed` seen)",
    "accurate": f"latency, {ACCURATE_SECONDS:g} s accurate cut (register → `completed` seen)",
    "batch": "throughput, a batch of copy cuts, 1 worker (clips/s)",
    "cpu": "CPU per clip in that batch: API + worker + its FFmpeg (ms)",
}
# PostgreSQL's share is left out: its shared processes (checkpointer, WAL writer) also serve every other database
# on the server, which makes it the noisiest figure on a shared machine.
SERVICE_GROUPS = ("api", "workers", "ffmpeg")


def cpu_per_clip(run: ThroughputRun, groups: Sequence[str] = SERVICE_GROUPS) -> float:
    """CPU seconds `groups` (by default the service's processes) used per clip of a batch."""
    return sum(run.cpu.cores.get(g, 0.0) for g in groups) * run.seconds / run.clips


@dataclass
class ProgressCost:
    seconds: dict[str, list[float]] = field(default_factory=dict)  # "<case>-on" / "<case>-off" -> per round
    batches: dict[str, list[ThroughputRun]] = field(default_factory=dict)  # "batch-on" / "batch-off" -> per round
    notifications: dict[str, list[int]] = field(default_factory=dict)  # "<case>-on" -> progress NOTIFYs per clip


class ProgressCounter:
    """Counts the progress notifications (eventlog.progress.PROGRESS_CHANNEL) per clip, with their arrival times."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str, int], list[float]] = {}

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        message = json.loads(payload)
        key = (message["project_id"], message["clip_id"], message["attempt"])
        self.arrivals.setdefault(key, []).append(time.time())

    def count(self, project: str, clip_id: str) -> int:
        return sum(len(v) for (p, c, _), v in self.arrivals.items() if (p, c) == (project, clip_id))


async def run_progress_cost(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, counter: ProgressCounter, rounds: int,
    batch: int, batch_rounds: int, observe: str,
) -> ProgressCost:  # fmt: skip
    wrapper = cluster.wrapper("progress-toggle", PROGRESS_TOGGLE)
    off = cluster.root / "progress-toggle.state" / "off"
    worker = cluster.worker("p", concurrency=1, CLIPLOG_FFMPEG=wrapper)
    await cluster.wait_log(worker, [r"worker \S+ started", r"reactor: leading", r"reaper: leading"], timeout=60)
    cost = ProgressCost()

    def switch(case: str) -> None:
        if case == "on":
            off.unlink(missing_ok=True)
        else:
            off.touch()

    rng = random.Random(1201)
    try:
        for warm in ("on", "off"):
            switch(warm)
            await register_and_wait(client, "pcost", f"warm-{warm}", 2.0, observe)
        for r in range(rounds):
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            await db.execute("CHECKPOINT")
            line = []
            for mode, seconds in (("copy", CLIP_SECONDS), ("accurate", ACCURATE_SECONDS)):
                for case in order:
                    switch(case)
                    await asyncio.sleep(rng.uniform(0.1, 0.14))
                    clip_id = f"r{r}-{mode}-{case}"
                    sighting = await register_and_wait(client, "pcost", clip_id, offset(r), observe, mode, seconds)
                    cost.seconds.setdefault(f"{mode}-{case}", []).append(sighting.seconds)
                    await asyncio.sleep(0.05)  # the last notification
                    cost.notifications.setdefault(f"{mode}-{case}", []).append(counter.count("pcost", clip_id))
                    line.append(f"{mode}/{case} {sighting.seconds * 1000:6.1f} ms")
            log(f"progress cost round {r + 1}/{rounds}: " + ", ".join(line))
        for r in range(batch_rounds):
            for case in ["on", "off"] if r % 2 == 0 else ["off", "on"]:
                switch(case)
                run = await throughput_run(cluster, client, db, 1, batch, f"pbatch{r}{case}", observe)
                cost.batches.setdefault(f"batch-{case}", []).append(run)
                log(f"progress cost batch round {r + 1}/{batch_rounds} {case}: {run.rate:5.2f} clips/s")
    finally:
        off.unlink(missing_ok=True)
        await cluster.stop(worker)
    return cost


def render_progress_cost(cost: ProgressCost) -> list[str]:
    lines = [
        "| case | with `-progress` | without | overhead (median of per-round ratios − 1) | spread of the rounds (p25 to p75) | per round | target |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for case, label in PROGRESS_CASES.items():
        if case == "batch":
            on = [r.rate for r in cost.batches.get("batch-on", [])]
            off = [r.rate for r in cost.batches.get("batch-off", [])]
            ratios = [b / a for a, b in zip(on, off)]  # time per clip: with / without
            shown_on, shown_off = cell(on), cell(off)
        elif case == "cpu":
            on = [cpu_per_clip(r) * 1000 for r in cost.batches.get("batch-on", [])]
            off = [cpu_per_clip(r) * 1000 for r in cost.batches.get("batch-off", [])]
            ratios = [a / b for a, b in zip(on, off)]
            shown_on, shown_off = cell(on), cell(off)
        else:
            on, off = cost.seconds.get(f"{case}-on", []), cost.seconds.get(f"{case}-off", [])
            ratios = [a / b for a, b in zip(on, off)]
            shown_on, shown_off = cell([v * 1000 for v in on]) + " ms", cell([v * 1000 for v in off]) + " ms"
        if not ratios:
            continue
        overhead = statistics.median(ratios) - 1
        low, high = (pctl(ratios, 0.25) - 1, pctl(ratios, 0.75) - 1)
        verdict = "< 5 %: met" if overhead < 0.05 else "< 5 %: **not met**"
        if high - low > 0.10:
            verdict += " (within the rounds' noise: measure on a quiet machine)"
        per_round = ", ".join(f"{(x - 1) * 100:+.1f} %" for x in ratios)
        lines.append(
            f"| {label} | {shown_on} | {shown_off} | {overhead * 100:+.1f} % | {low * 100:+.1f} to {high * 100:+.1f} % "
            f"| {per_round} | {verdict} |"
        )
    counts = {k: v for k, v in cost.notifications.items() if k.endswith("-on")}
    if counts:
        lines.append("")
        lines.append(
            "Progress notifications per clip with `-progress` (each is one write beside the lease and one NOTIFY; "
            "without it there are none): "
            + "; ".join(f"{k.removesuffix('-on')} {cell([float(c) for c in v])}" for k, v in counts.items())
            + "; without: "
            + "; ".join(f"{k.removesuffix('-off')} {sum(v)}" for k, v in cost.notifications.items() if k.endswith("-off"))
            + " in all."
        )
    return lines


# 5. Stall detection --------------------------------------------------------------------------------------------

STALL_SCALED, STALL_FULL = 5.0, 30.0
FREEZE_AFTER = 3.0
# Once per run ($STATE/arm, removed here): the real FFmpeg reads at its own pace for FREEZE_AFTER s, then is frozen; the
# freeze time is kept for the bench. The attempt's retry runs the real FFmpeg.
FREEZE_ONCE = f"""
if [ -e "$STATE/arm" ]; then
  rm -f "$STATE/arm"
  "$REAL" -re "$@" &
  child=$!
  sleep {FREEZE_AFTER:g}
  kill -STOP "$child"
  date +%s.%N > "$STATE/frozen-at"
  wait "$child"
  exit 1
fi
exec "$REAL" "$@"
"""


@dataclass
class StallRun:
    from_last_progress: float  # timed_out recorded_at - the attempt's last progress notification
    from_freeze: float  # timed_out recorded_at - the SIGSTOP
    elapsed: float  # the timed_out's elapsed_seconds
    reason: str
    notifications: int


async def run_stall(
    cluster: BenchCluster, client: Client, db: asyncpg.Connection, counter: ProgressCounter, stall_after: float,
    runs: int,
) -> list[StallRun]:  # fmt: skip
    wrapper = cluster.wrapper("freeze", FREEZE_ONCE)
    state = cluster.root / "freeze.state"
    worker = cluster.worker(
        "stall", concurrency=1, CLIPLOG_FFMPEG=wrapper, CLIPLOG_STALL_AFTER=f"{stall_after:g}",
    )  # fmt: skip
    await cluster.wait_log(worker, [r"worker \S+ started", r"reactor: leading", r"reaper: leading"], timeout=60)
    results = []
    try:
        for k in range(runs):
            (state / "arm").touch()
            project, clip_id = "stall", f"s{k}"
            await client.register(project, clip_id, offset(k), offset(k) + 10.0, "accurate")
            deadline = time.monotonic() + stall_after + 3 * RETRY_BASE + 60
            while (clip := await client.clip(project, clip_id))["status"] != "completed":
                if clip["status"] == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"{project}/{clip_id}: {clip['status']} {clip.get('last_error')}")
                await asyncio.sleep(0.1)
            _, timed_out = first(await clip_events(db, project, clip_id), "timed_out")
            arrivals = counter.arrivals.get((project, clip_id, 1), [])
            frozen_at = float((state / "frozen-at").read_text())
            run = StallRun(
                from_last_progress=timed_out["at"] - max(arrivals) if arrivals else math.nan,
                from_freeze=timed_out["at"] - frozen_at,
                elapsed=float(timed_out["data"].get("elapsed_seconds", math.nan)),
                reason=str(timed_out["data"].get("reason")),
                notifications=len(arrivals),
            )
            results.append(run)
            log(
                f"stall run {k + 1}/{runs}: timed_out ({run.reason}) {run.from_last_progress:.2f} s after the last "
                f"progress, {run.from_freeze:.2f} s after the SIGSTOP ({run.notifications} progress notifications)"
            )
    finally:
        await cluster.stop(worker)
    return results


def render_stall(runs: list[StallRun], stall_after: float) -> list[str]:
    lines = [
        f"CLIPLOG_STALL_AFTER={stall_after:g}; the worker's watch restarts its clock at each report that advances "
        "(FFmpeg reports every 0.5 s, so its last report comes up to 0.5 s before the SIGSTOP); progress is written "
        "at most once a second, so the last notification can come up to 1 s after the last report. Each figure "
        "also includes the time to record the `timed_out`.",
        "",
        "| measurement (s) | median (min–max) | per run | expected |",
        "|---|---:|---|---|",
    ]
    rows = [
        ("last progress notification → `timed_out` recorded", [r.from_last_progress for r in runs],
         f"{stall_after - 1:g} to {stall_after:g}"),
        ("SIGSTOP → `timed_out` recorded", [r.from_freeze for r in runs], f"{stall_after - 0.5:g} to {stall_after:g}"),
        ("`elapsed_seconds` of the timed-out attempt", [r.elapsed for r in runs], f"about {FREEZE_AFTER + stall_after:g}"),
    ]  # fmt: skip
    for label, values, expected in rows:
        lines.append(f"| {label} | {cell(values)} | {', '.join(fmt(v) for v in values)} | {expected} |")
    lines.append("")
    lines.append(f"`reason` of the `timed_out` events: {', '.join(sorted({r.reason for r in runs}))} ({len(runs)} runs).")
    return lines


# Orchestration -------------------------------------------------------------------------------------------------


def _ffmpeg_version(ffmpeg: str) -> str:
    try:
        out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout
        return out.split()[2]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


async def bench(args: argparse.Namespace) -> str:
    started = time.perf_counter()
    async with scratch_database(args.dsn, "pipe") as scratch:
        database, dsn = scratch.name, scratch.dsn
        workdir = Path(tempfile.mkdtemp(prefix="cliplog-pipeline-bench-"))
        admin: asyncpg.Connection | None = None
        cluster: BenchCluster | None = None
        client: Client | None = None
        redis: ArqRedis | None = None
        ok = False
        try:
            admin = await asyncpg.connect(dsn)
            server_version = await admin.fetchval("SHOW server_version")
            token = await create_token(admin, USER)
            ffmpeg = find_ffmpeg(os.environ)
            t = time.perf_counter()
            source = make_source(ffmpeg, workdir / "media" / SOURCE)
            log(f"generated {source} ({source.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
            cluster = BenchCluster(workdir, database, dsn, ffmpeg)
            cluster.api = await asyncio.to_thread(cluster.serve)
            client = Client(cluster.api.url, token)
            redis = ArqRedis.from_url(cluster.redis_url)
            log(f"cliplog serve at {cluster.api.url}, Redis at {cluster.redis_url}, logs in {cluster.log_dir}")
            worker_a = cluster.worker("a", concurrency=1)
            await cluster.wait_log(worker_a, [r"worker \S+ started", r"(reactor|dispatcher): leading", r"reaper: leading"], timeout=60)

            # Warm-up (connections, statements, page cache), then check the feed.
            t = time.perf_counter()
            await register_and_wait(client, "latency", "warmup", 3.0, "poll")
            log(f"warm-up clip completed in {(time.perf_counter() - t) * 1000:.0f} ms")
            notes: dict[str, str] = {}  # observer -> why it is not measured
            if args.observe == "poll":
                notes = {"ws": "--observe poll", "feed": "--observe poll"}
            else:
                for kind, clip_id, at in (("feed", "feed-probe", 30.0), ("ws", "socket-probe", 32.0)):
                    if (note := await probe_feed(client, "latency", kind, clip_id, at)) is not None:
                        notes[kind] = note
                        log(f"{OBSERVED_BY[kind]} unavailable ({note})")
                if args.observe in notes:
                    raise RuntimeError(f"{OBSERVED_BY[args.observe]} does not work: {notes[args.observe]}")
            observers = [o for o in ("ws", "feed") if o not in notes] + ["poll"]
            # the batches are watched as an app's clip list watches them: on the feed's socket (unless asked)
            observe = observers[0] if args.observe == "auto" else args.observe

            sections = {int(n) for n in args.sections.split(",")}
            latency: dict[str, list[LatencyRun]] = {}
            if 1 in sections:
                log(f"1. latency: {args.rounds} rounds of {' / '.join(['bare', *observers])}")
                latency = await run_latency(cluster, client, admin, redis, source, args.rounds, observers)

            throughput: dict[str, list[ThroughputRun]] = {case: [] for case in THROUGHPUT_CASES}
            if 2 in sections:
                log(
                    f"2. throughput: batches of {args.batch}, {args.throughput_rounds} round(s) of 1 and 2 workers, "
                    "and of bare FFmpeg 1 and 2 at a time"
                )
            for r in range(args.throughput_rounds if 2 in sections else 0):
                order = ["bare1", "svc1", "bare2", "svc2"]
                for case in order if r % 2 == 0 else order[::-1]:
                    parallel = int(case[-1])
                    if case.startswith("bare"):
                        await admin.execute("CHECKPOINT")
                        run = await bare_batch(cluster, source, args.batch, parallel)
                        detail = f"median cut {run.attempt * 1000:.0f} ms"
                    else:
                        project = f"tp{r}w{parallel}"
                        run = await throughput_run(cluster, client, admin, parallel, args.batch, project, observe)
                        detail = f"POSTs {run.register_seconds:.2f} s, per worker {run.per_worker}"
                    throughput[case].append(run)
                    log(
                        f"throughput round {r + 1}/{args.throughput_rounds} {case}: {run.rate:5.2f} clips/s "
                        f"({run.clips} in {run.seconds:.2f} s, {detail}; host CPU {run.cpu.host_busy:.0%} busy, other "
                        f"load {run.cpu.cores.get('other', 0.0):.2f} CPUs)"
                    )

            detection_env = dict(FULL if args.full_detection else SCALED)
            await cluster.stop(worker_a)
            detection: list[DetectionRun] = []
            if 3 in sections:
                log(f"3. detection after SIGKILL: {args.detection_runs} run(s) with {detection_env}")
                detection = await run_detection(cluster, client, admin, detection_env, args.detection_runs)

            counter = ProgressCounter()
            listener = await asyncpg.connect(dsn)
            try:
                await listener.add_listener(PROGRESS_CHANNEL, counter)
                progress_cost: ProgressCost | None = None
                if 4 in sections:
                    log(f"4. the cost of progress: {args.rounds} rounds, {args.throughput_rounds} batch round(s)")
                    progress_cost = await run_progress_cost(
                        cluster, client, admin, counter, args.rounds, args.batch, args.throughput_rounds, observe
                    )
                stall_after = STALL_FULL if args.full_detection else STALL_SCALED
                stalls: list[StallRun] = []
                if 5 in sections:
                    log(f"5. stall detection: {args.detection_runs} run(s), CLIPLOG_STALL_AFTER={stall_after:g}")
                    stalls = await run_stall(cluster, client, admin, counter, stall_after, args.detection_runs)
            finally:
                await listener.close()

            cpus = psutil.cpu_count()
            header = [
                f"## cliplog pipeline benchmark (PostgreSQL {server_version}, FFmpeg {_ffmpeg_version(ffmpeg)}, "
                f"{cpus} CPUs, scratch database {database})",
                "",
                f"Real `cliplog serve` and `cliplog worker` processes, a private Redis, a {SOURCE_SECONDS} s 1280x720 "
                "25 fps H.264/AAC source with a keyframe every 2 s; every clip is 10 s in copy mode. The "
                f"{cpus} CPUs are shared by PostgreSQL, Redis, the API, the workers, FFmpeg and this client. "
                f"Whole run {time.perf_counter() - started:.0f} s.",
                "",
                f"### 1. Latency: register → `completed` against bare FFmpeg ({args.rounds} interleaved rounds, "
                "1 worker, concurrency 1, default settings)",
                "",
            ]
            others = [r.cpu.cores.get("other", 0.0) for rs in latency.values() for r in rs]
            others += [r.cpu.cores.get("other", 0.0) for rs in throughput.values() for r in rs]
            if others:
                disturbed = statistics.median(others) > OTHER_LOAD_WARNING or pctl(others, 0.9) > 2 * OTHER_LOAD_WARNING
                header.insert(
                    -4,
                    f"Other load on the host (CPUs used outside this bench's processes, per measured run): median "
                    f"{statistics.median(others):.2f}, p90 {pctl(others, 0.9):.2f}, max {max(others):.2f}"
                    + (": **the run was disturbed; measure again on a quiet machine.**" if disturbed else "."),
                )
                header.insert(-4, "")
            if 1 not in sections:
                header = header[:-2]
            lines = header + (render_latency(latency, observers, notes) if 1 in sections else [])
            lines += [] if 2 not in sections else [
                "",
                f"### 2. Throughput: {args.batch} clips POSTed at once ({args.throughput_rounds} interleaved round(s), "
                f"observed by {OBSERVED_BY[observe]}), against the same "
                "cuts run by bare FFmpeg",
                "",
            ]
            lines += render_throughput(throughput, args.batch) if 2 in sections else []
            lines += [] if 2 not in sections else [
                "",
                f"CPU columns: median share of all {cpus} host CPUs busy during the run (anything on the machine) / "
                "CPUs used by each group: the API process, the worker processes (Python), their FFmpeg children, "
                "PostgreSQL's shared processes and this database's backends, redis-server, this client (with the "
                "bare FFmpeg runs), and the rest of the busy time (kernel, other databases' backends, other "
                "processes on the host: a high figure means the run was disturbed). "
                "Per-attempt columns: medians over "
                "the run's clips from their `recorded_at` (the idle time runs from a worker's `completed` to its next "
                "`started`: commit, arq's bookkeeping and next poll, loading the clip).",
            ]
            if 3 in sections:
                lines += ["", f"### 3. Detection of a SIGKILLed worker ({len(detection)} runs; the survivor leads the reaper)", ""]
                lines += render_detection(detection, detection_env, args.full_detection)
            if progress_cost is not None:
                lines += [
                    "",
                    f"### 4. The cost of live progress ({args.rounds} interleaved rounds of each latency case, "
                    f"{args.throughput_rounds} of batches of {args.batch}; 1 worker, concurrency 1)",
                    "",
                ]
                lines += render_progress_cost(progress_cost)
            if 5 in sections:
                lines += ["", f"### 5. Stall detection: a frozen FFmpeg ({len(stalls)} runs)", ""]
                lines += render_stall(stalls, stall_after)
            ok = True
            return "\n".join(lines)
        finally:
            if client is not None:
                await client.close()
            if redis is not None:
                await redis.aclose()
            if cluster is not None:
                await asyncio.to_thread(cluster.close)
            if admin is not None:
                await admin.close()
            if ok and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                log(f"kept {workdir} (process logs in {workdir / 'logs'})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"admin connection (default {DEFAULT_DSN})")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches (~90 s)")
    parser.add_argument("--full-detection", action="store_true",
                        help="detection with API.md's defaults (heartbeat 5, lease 20, reaper 5) instead of 1/4/1")
    parser.add_argument("--rounds", type=int, help="latency rounds (default 20, --quick 6)")
    parser.add_argument("--batch", type=int, help="clips per throughput batch (default 100, --quick 30)")
    parser.add_argument("--throughput-rounds", type=int, help="interleaved throughput rounds (default 3, --quick 1)")
    parser.add_argument("--detection-runs", type=int, help="SIGKILL runs (default 5, --quick 2)")
    parser.add_argument("--observe", choices=("auto", "ws", "feed", "poll"), default="auto",
                        help="how the client sees a batch's completions: the feed's WebSocket when the feed works (auto), "
                        "the long poll (feed), or listing the project (poll); the latency rounds use each of them "
                        "that works")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, clips)")
    parser.add_argument("--sections", default="1,2,3,4,5",
                        help="which sections to run, e.g. 4,5 (default all: 1,2,3,4,5)")
    args = parser.parse_args(argv)  # fmt: skip
    apply_defaults(args, quick={"rounds": 6, "batch": 30, "throughput_rounds": 1, "detection_runs": 2}, full={"rounds": 20, "batch": 100, "throughput_rounds": 3, "detection_runs": 5})
    table = asyncio.run(bench(args))
    print(table, flush=True)


if __name__ == "__main__":
    main()
