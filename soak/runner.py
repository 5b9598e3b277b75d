"""`cliplog soak`: start the topology, run the workload and the feed clients under random faults for `duration`
seconds, wait for the system to settle, check everything (soak/checks.py) and print the report (soak/report.py).

Every random choice comes from the seed (printed first; `--seed` repeats a run's choices), one generator per
concern, so a lane's choices do not depend on how the others interleave. What happens in response (which attempt a
kill catches) still depends on timing.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import msgspec

from eventlog.store import init_connection
from handlers import mp4
from projections.rebuild import rebuild_differences
from runtime.settings import Settings
from soak import checks
from soak.checks import Bound, FinalClip, LoggedEvent, OutputFacts
from soak.faults import FAULTS, Context, Fault, inject
from soak.feeds import FeedRecorder
from soak.report import Outcome, print_report
from soak.topology import API_INSTANCES, WORKER_CONCURRENCY, WORKERS, Topology
from soak.workload import BEHAVIOURS, USERS, ApiClients, Workload, plan_clips

PROCESS_FAULT_GAP = 2.5  # mean seconds between faults of a lane
CLIENT_FAULT_GAP = 1.5
FEED_CATCH_UP = 60.0
FFPROBE_SAMPLE = 20  # completed files also read by ffprobe (each costs ~0.1 s of CPU)


class Options(msgspec.Struct, frozen=True, kw_only=True):
    duration: float = 60.0
    seed: int | None = None
    clips: int | None = None  # default: max(240, 1.5 per second of faults)
    data_dir: Path | None = None
    keep: bool = False


def waiting_bounds(settings: Settings) -> dict[str, Bound]:
    """What each waiting state promises, from the settings (README "How a clip never gets stuck"). A pending or
    retrying clip also waits for a free worker slot, which is load, not a fault: those bounds are reported, not
    enforced (the settle timeout still catches a clip that never ends)."""
    pickup = settings.requeue_after + settings.reaper_interval
    backoff = min(settings.retry_max, settings.retry_base * 2 ** max(0, settings.max_attempts - 2))
    return {
        "pending": Bound(pickup, "requeue_after + reaper_interval, + the wait for a free worker slot", enforced=False),
        "running": Bound(
            settings.attempt_timeout + 2 * settings.heartbeat_interval + settings.reaper_interval,
            "attempt deadline + 2 heartbeats + reaper_interval (a lost worker: lease_timeout + reaper_interval)",
        ),
        "retrying": Bound(backoff + pickup, "backoff cap + requeue_after + reaper_interval, + the wait for a free "
                          "worker slot", enforced=False),  # fmt: skip
    }


def settle_timeout(settings: Settings, bounds: dict[str, Bound], clips: int) -> float:
    """How long the soak waits for every clip to end: a whole budget of attempts, each at its bounds, plus time to
    drain a backlog of `clips` at a pessimistic one clip per worker slot every two seconds."""
    per_attempt = bounds["running"].seconds + bounds["retrying"].seconds
    return settings.max_attempts * per_attempt * 2 + bounds["pending"].seconds + 60 + clips * 2 / (WORKERS * WORKER_CONCURRENCY)


def mp4_whole(path: Path) -> bool:
    """The file's top-level boxes follow one another to its exact end, with a `moov` and an `mdat`."""
    size = path.stat().st_size
    offset, kinds = 0, set()
    with path.open("rb") as handle:
        while offset < size:
            handle.seek(offset)
            head = handle.read(16)
            if len(head) < 8:
                return False
            length, kind = struct.unpack_from(">I4s", head)
            if length == 1 and len(head) == 16:
                length = struct.unpack_from(">Q", head, 8)[0]
            elif length == 0:
                length = size - offset
            if length < 8:
                return False
            kinds.add(kind)
            offset += length
    return offset == size and {b"moov", b"mdat"} <= kinds


def ffprobe_duration(ffprobe: str, path: Path) -> float | None:
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    try:
        return float(result.stdout.strip()) if result.returncode == 0 else None
    except ValueError:
        return None


class Soak:
    def __init__(self, topology: Topology, seed: int, options: Options) -> None:
        self.topology = topology
        self.seed = seed
        self.options = options
        self.settings = topology.settings
        self.duration = options.duration
        self.count = options.clips or max(240, int(1.5 * options.duration))
        self.faults: list[Fault] = []
        self.notes: list[str] = []

    def rng(self, concern: str) -> random.Random:
        return random.Random(f"{self.seed}:{concern}")

    async def run(self) -> Outcome:
        topology = self.topology
        feeds = [FeedRecorder(user, topology.tokens[user], kind, topology.urls, self.rng(f"feed:{user}:{kind}"))
                 for user in USERS for kind in ("ws", "poll")]  # fmt: skip
        feed_tasks = [asyncio.create_task(feed.run()) for feed in feeds]
        clients = ApiClients(topology.urls, topology.tokens, self.rng("clients"))
        workload = Workload(clients, plan_clips(self.rng("plan"), self.count, self.duration * 0.7, BEHAVIOURS), BEHAVIOURS)
        stop = asyncio.Event()
        supervisor = asyncio.create_task(self._supervise())
        began = time.monotonic()
        registering = asyncio.create_task(workload.register_all(began))
        refusing = asyncio.create_task(workload.refused_requests(self.rng("refused"), stop))
        until = began + self.duration
        lanes = [
            inject(Context(topology=topology, feeds=feeds, rng=self.rng("faults:processes")), "processes", until,
                   PROCESS_FAULT_GAP, self.faults),
            inject(Context(topology=topology, feeds=feeds, rng=self.rng("faults:clients")), "clients", until,
                   CLIENT_FAULT_GAP, self.faults),
        ]  # fmt: skip
        await asyncio.gather(*lanes)
        last_fault = max((f.ended for f in self.faults), default=until)
        self._say(f"faults stopped after {time.monotonic() - began:.0f} s ({len(self.faults)} injected); settling")
        await registering
        stop.set()
        await refusing
        await asyncio.to_thread(topology.ensure_running)
        bounds = waiting_bounds(self.settings)
        settled = await self._settle(workload, settle_timeout(self.settings, bounds, self.count))
        settled_wall = time.time()
        settle_seconds = None if settled is None else max(0.0, settled - last_fault)
        supervisor.cancel()
        for person in workload.people:
            person.cancel()
        events = await self._events()
        await self._catch_up(feeds, events)
        for task in feed_tasks:
            task.cancel()
        await asyncio.gather(*feed_tasks, supervisor, *workload.people, return_exceptions=True)
        await clients.close()
        outcome = await self._check(workload, feeds, events, bounds, settled_wall)
        outcome.settle_seconds = settle_seconds
        self.notes.append(
            f"API answers: {dict(sorted(clients.statuses.items()))}, {clients.errors} connection error(s) retried; "
            f"refused requests answered {dict(sorted(workload.refused.items()))}; person: "
            f"{dict(workload.person_actions) or 'nothing'}; processes that exited on their own and were restarted: "
            f"{topology.unplanned_exits}"
        )
        return outcome

    def _say(self, line: str) -> None:
        print(f"soak: {line}", file=sys.stderr, flush=True)

    async def _supervise(self) -> None:
        while True:
            await asyncio.to_thread(self.topology.supervise_once)
            await asyncio.sleep(0.5)

    async def _connect(self) -> asyncpg.Connection:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = await asyncpg.connect(self.topology.database_url, timeout=5)
                await init_connection(conn)
                return conn
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _settle(self, workload: Workload, timeout: float) -> float | None:
        """Until every accepted clip is terminal and no person has anything left to do; when (time.monotonic()),
        or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        conn = await self._connect()
        try:
            while time.monotonic() < deadline:
                try:
                    waiting = await conn.fetchval(
                        "SELECT count(*) FROM clips WHERE status NOT IN ('completed', 'failed', 'cancelled')"
                    )
                except (OSError, asyncpg.PostgresError):
                    await conn.close(timeout=1)
                    conn = await self._connect()
                    continue
                if waiting == 0 and not workload.pending_people:
                    return time.monotonic()
                await asyncio.sleep(0.2)
            return None
        finally:
            await conn.close(timeout=2)

    async def _events(self) -> list[LoggedEvent]:
        conn = await self._connect()
        try:
            rows = await conn.fetch(
                """
                SELECT position, project_id, clip_id, version, type, (data->>'run')::int AS run,
                       (data->>'attempt')::int AS attempt, clip_status, extract(epoch FROM recorded_at) AS at,
                       data->>'detected_by' AS detected_by,
                       CASE WHEN type = 'extraction.timed_out' THEN data->>'reason' END AS reason
                FROM events ORDER BY position
                """
            )
        finally:
            await conn.close()
        return [
            LoggedEvent(position=r["position"], project_id=r["project_id"], clip_id=r["clip_id"], version=r["version"],
                        type=r["type"], run=r["run"], attempt=r["attempt"], clip_status=r["clip_status"],
                        recorded_at=float(r["at"]), detected_by=r["detected_by"], reason=r["reason"])
            for r in rows
        ]  # fmt: skip

    async def _catch_up(self, feeds: list[FeedRecorder], events: list[LoggedEvent]) -> None:
        """Give each feed client time to receive its user's whole log (it may be reconnecting)."""
        owners = {project: user for user, projects in USERS.items() for project in projects}
        wanted = Counter(owners.get(e.project_id) for e in events)
        deadline = time.monotonic() + FEED_CATCH_UP
        while time.monotonic() < deadline:
            if all(len(f.received) >= wanted[f.user] or f.problems for f in feeds):
                return
            await asyncio.sleep(0.2)

    async def _check(
        self, workload: Workload, feeds: list[FeedRecorder], events: list[LoggedEvent], bounds: dict[str, Bound],
        settled_wall: float,
    ) -> Outcome:  # fmt: skip
        conn = await self._connect()
        try:
            rows = await conn.fetch(
                """
                SELECT project_id, clip_id, status, attempt, (state->>'max_attempts')::int AS max_attempts,
                       state->'last_error'->>'code' AS code, (state->'last_error'->>'retryable')::bool AS retryable,
                       state->>'output' AS output, (state->>'bytes')::bigint AS bytes, (state->>'start')::float AS start,
                       (state->>'end')::float AS "end", state->>'mode' AS mode
                FROM clips
                """
            )
            owners = dict(await conn.fetch("SELECT project_id, owner FROM projects"))
            differences = await rebuild_differences(conn)
        finally:
            await conn.close()
        finals = [FinalClip(project_id=r["project_id"], clip_id=r["clip_id"], status=r["status"], attempt=r["attempt"],
                            max_attempts=r["max_attempts"], error_code=r["code"], error_retryable=r["retryable"])
                  for r in rows]  # fmt: skip
        completed = [r for r in rows if r["status"] == "completed"]
        outputs = await asyncio.to_thread(self._output_facts, completed)
        leftovers, awaiting = self._leftovers(completed, events)
        sweep = getattr(self.settings, "orphan_grace", None)
        if leftovers and sweep is not None:  # an output a cancel or a hand-back left: the orphan sweep's to remove
            await asyncio.sleep(sweep + self.settings.orphan_sweep_interval + 1)
            leftovers, awaiting = self._leftovers(completed, events)
        if awaiting:
            self.notes.append(
                f"{len(awaiting)} temporary file(s) of attempts whose worker was SIGKILLed wait for the reaper's sweep "
                f"(older than attempt_timeout + 60 s), e.g. {awaiting[0]}"
            )
        planned_owners = {project: user for user, projects in USERS.items() for project in projects}
        ownership = [f"project {p} belongs to {owners.get(p)}, not {u}" for p, u in planned_owners.items()
                     if p in owners and owners[p] != u]  # fmt: skip
        feed_problems = []
        for feed in feeds:
            expected = [e for e in events if owners.get(e.project_id) == feed.user]
            feed_problems += feed.problems + checks.check_feed(feed.name, feed.received, expected)
        gaps = checks.longest_gaps(events, settled_wall)
        timeouts = Counter(f"{e.detected_by}/{e.reason}" for e in events if e.type == "extraction.timed_out")
        self.notes.append(f"timed_out by detector/reason: {dict(sorted(timeouts.items()))}")
        self.notes.append(self._delays(feeds, events))
        slack = 5.0 + max((f.ended - f.began for f in self.faults if f.kind.startswith("restart")), default=0.0)
        results = [
            ("every request answered as the contract says", workload.problems[: checks.MAX_LISTED]),
            ("every accepted clip is in the log and the projection, nothing else", checks.check_registered(
                workload.accepted, {e.key for e in events}, [c.key for c in finals])),
            ("every clip completed, cancelled, or failed after its budget or a non-retryable error",
             checks.check_final_states(finals)),
            ("log: versions contiguous per stream", checks.check_versions(events)),
            ("log: one `requested` per attempt, at most one `started` and one outcome", checks.check_attempts(events)),
            ("every completed clip's file exists, is whole and lasts as asked", checks.check_outputs(outputs)),
            ("no temporary file or orphan output", leftovers),
            ("every feed client saw exactly its user's log, once, in order", ownership + feed_problems),
            ("the clip projection equals a rebuild from the log",
             [f"{kind}: {p}/{c}" for kind, keys in sorted(differences.items()) for p, c in keys][: checks.MAX_LISTED]),
            ("no clip waited past its state's bound", checks.check_gaps(gaps, bounds, slack)),
            ("every fault was injected as planned", [f"{f.kind}: {f.detail}" for f in self.faults if f.failed]),
            *self._dispatch_limits(events, owners),
        ]  # fmt: skip
        by_behaviour: dict[str, Counter[str]] = {b.name: Counter() for b in BEHAVIOURS}
        as_expected: Counter[str] = Counter()
        for clip in finals:
            if (clip.project_id, clip.clip_id) not in workload.accepted:
                continue
            behaviour = workload.expected(clip.key)
            label = f"failed:{clip.error_code}" if clip.status == "failed" else clip.status
            by_behaviour[behaviour.name][label] += 1
            if clip.status == behaviour.expect and (behaviour.code is None or behaviour.code == clip.error_code):
                as_expected[behaviour.name] += 1
        return Outcome(
            seed=self.seed, duration=self.duration, root=self.topology.root, settings=self.settings,
            faults=self.faults, clips=by_behaviour, expected=as_expected, settle_seconds=None, gaps=gaps,
            bounds=bounds, slack=slack, feeds=feeds, checks=results, notes=self.notes,
        )  # fmt: skip

    def _leftovers(self, completed: list[asyncpg.Record], events: list[LoggedEvent]) -> tuple[list[str], list[str]]:
        root = self.settings.output_root
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        return checks.check_leftover_files(files, [r["output"] for r in completed], events)

    def _dispatch_limits(self, events: list[LoggedEvent], owners: dict[str, str]) -> list[tuple[str, list[str]]]:
        """Fair dispatch's limits, where it exists: never more attempts running at once per project or per user
        than CLIPLOG_PROJECT_CONCURRENCY / CLIPLOG_OWNER_CONCURRENCY allow."""
        results = []
        for what, limit, group in (
            ("project", getattr(self.settings, "project_concurrency", None), lambda e: e.project_id),
            ("user", getattr(self.settings, "owner_concurrency", None), lambda e: owners.get(e.project_id, "?")),
        ):
            if limit is None:
                continue
            most = checks.most_running_at_once(events, group)
            over = [f"{key}: {n} running at once" for key, n in sorted(most.items()) if n > limit]
            self.notes.append(f"most attempts running at once per {what}: {dict(sorted(most.items()))}")
            results.append((f"fair dispatch: at most {limit} running per {what}", over))
        return results

    def _delays(self, feeds: list[FeedRecorder], events: list[LoggedEvent]) -> str:
        """The WebSocket clients' commit-to-arrival delays, and those while an unrelated transaction was held open
        (DESIGN.md invariant 10: only appending transactions may hold the feed back)."""
        to_wall = time.time() - time.monotonic()
        holds = [(f.began + to_wall, f.ended + to_wall) for f in self.faults if f.kind == "hold_transaction"]
        recorded = {e.position: e.recorded_at for e in events}
        arrivals = [(e.position, at) for f in feeds if f.kind == "ws" for e, at in zip(f.received, f.arrived)]
        every, held = checks.feed_delays(arrivals, recorded, holds)
        if not every:
            return "feed delay: no WebSocket event arrived"
        line = (f"WebSocket delay, commit to arrival: median {every[len(every) // 2] * 1000:.0f} ms, "
                f"p99 {every[int(len(every) * 0.99)] * 1000:.0f} ms, max {every[-1]:.1f} s (reconnections included)")
        if held:
            line += (f"; while an unrelated write transaction was held open ({len(held)} events): median "
                     f"{held[len(held) // 2] * 1000:.0f} ms, max {held[-1]:.1f} s")
        return line

    def _output_facts(self, completed: list[asyncpg.Record]) -> list[OutputFacts]:
        ffprobe = self.settings.ffprobe
        sample = {r["output"] for r in self.rng("ffprobe").sample(completed, min(FFPROBE_SAMPLE, len(completed)))}
        facts = []
        for row in completed:
            path = self.settings.output_root / row["output"]
            length = row["end"] - row["start"]
            if row["mode"] == "accurate":
                shortest, longest = length - 0.5, length + 0.5
            else:  # a stream copy starts at the keyframe at or before `start`: the sources have one every second
                shortest, longest = length - 0.5, row["end"] - math.floor(row["start"]) + 0.5
            key = (row["project_id"], row["clip_id"])
            common = dict(key=key, path=row["output"], expected_min=shortest, expected_max=longest,
                          recorded_bytes=row["bytes"])  # fmt: skip
            if not path.is_file():
                facts.append(OutputFacts(exists=False, **common))
                continue
            whole = mp4_whole(path)
            info = mp4.read_info(path)
            duration = info.duration if info is not None and info.has_video else None
            if ffprobe and row["output"] in sample:
                probed = ffprobe_duration(ffprobe, path)
                whole = whole and probed is not None
                duration = probed if duration is None or probed is None else duration
                if probed is not None and duration is not None and abs(probed - duration) > 0.1:
                    whole = False  # the box reader and ffprobe disagree
            facts.append(OutputFacts(exists=True, size=path.stat().st_size, whole=whole, duration=duration, **common))
        return facts


def health(urls: list[str]) -> list[str]:
    lines = []
    for url in urls:
        try:
            body = httpx.get(url + "/api/extraction/health", timeout=5).json()
            lines.append(f"{url}: {body.get('status')}, workers alive {body.get('workers', {}).get('alive')}")
        except (httpx.HTTPError, ValueError) as error:
            lines.append(f"{url}: {type(error).__name__}")
    return lines


def run(options: Options) -> int:
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 2**31)
    root = (options.data_dir or Path(tempfile.mkdtemp(prefix="cliplog-soak-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # run as root, pgserver runs PostgreSQL as its own user, which must reach the data below
    print(f"cliplog soak: seed {seed} (repeat with --seed {seed}); {options.duration:g} s of faults; "
          f"{API_INSTANCES} API instances, {WORKERS} workers; data in {root}", flush=True)  # fmt: skip
    topology = Topology(root, BEHAVIOURS)
    try:
        outcome = asyncio.run(Soak(topology, seed, options).run())
        outcome.notes.extend(health(topology.urls()))
    finally:
        topology.close()
    print_report(outcome)
    if outcome.passed and not options.keep and options.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    elif not outcome.passed:
        print(f"the processes' logs and the data are kept in {root}")
    return 0 if outcome.passed else 1


__all__ = ["FAULTS", "Options", "Outcome", "run", "waiting_bounds"]
