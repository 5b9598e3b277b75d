"""The worker in this process: arq's real Worker (`handlers.worker.make_worker`) with the dispatcher (or, with
dispatch "fifo", the reactor) and its presence key, on a database of its own and the test Redis, running real FFmpeg or FFmpeg stand-ins (shell scripts)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import Worker, func

from domain.clip import ClipState, Fail, Start
from eventlog import store
from usecases import clips
from handlers import dispatcher, extraction, mp4, reactor, reaper
from handlers.worker import WakeableWorker, _shut_down, holds, presence_prefix
from projections import clip_status
from runtime.bootstrap import open_services, redis_settings
from usecases.services import Services, utcnow
from runtime.settings import Settings, find_ffmpeg
from tests.e2e.system import make_video
from tests.worker_support import outcomes, register, running_worker, settled

FFMPEG = find_ffmpeg(os.environ)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-media")
    make_video(FFMPEG, root / "match.mp4", seconds=12)
    make_video(FFMPEG, root / "sparse.mp4", seconds=30, gop=208)  # a keyframe every 8.32 s
    return root


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
async def settings_for(
    make_database, redis_url: str, source_root: Path, tmp_path: Path
) -> Callable[..., Awaitable[Settings]]:
    """`await settings_for(**overrides)`: settings on a new migrated database (nothing else follows its log)."""

    async def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            database_url=await make_database(migrated=True),
            redis_url=redis_url,
            data_dir=tmp_path,
            media_root=source_root,
            output_root=tmp_path / "clips",
            ffmpeg=FFMPEG,
            heartbeat_interval=0.5,
            lease_timeout=30.0,
            retry_base=0.1,
            retry_max=0.2,
        )
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


# 4. A job cancelled by arq's job_timeout is not a shutdown -------------------------------------------------------


async def test_a_job_cancelled_by_the_queue_timeout_uses_up_its_attempt_and_the_clip_fails(settings_for, tmp_path):
    hang = script(tmp_path / "hang.sh", "exec sleep 60\n")
    settings = await settings_for(ffmpeg=hang, attempt_timeout=60.0, max_attempts=2)
    async with running_worker(settings, job_timeout=1.0) as services:
        await register(services, "c1")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "timed_out", "worker"), (2, "timed_out", "worker")]
        elapsed = [e.data["elapsed_seconds"] for e in await store.read_stream(services.pool, "p", "c1")
                   if e.type == "extraction.timed_out"]
    assert all(s < 30 for s in elapsed), elapsed  # stopped by arq's 1 s job timeout, not the 60 s attempt deadline
    assert (state.status, state.attempt, state.max_attempts) == ("failed", 2, 2)
    assert state.last_error is not None and state.last_error.code == "timed_out"


# 9. Two deployments sharing one Redis database -------------------------------------------------------------------


async def test_two_deployments_on_one_redis_database_each_run_their_own_jobs(settings_for):
    first, second = await settings_for(), await settings_for()
    assert first.redis_url == second.redis_url and first.database_url != second.database_url
    async with running_worker(first, name="first-worker") as one, running_worker(second, name="second-worker") as two:
        # the same project and clip names in both logs, as two copies of one product would have
        for services in (one, two):
            for clip in ("c1", "c2", "c3"):
                await register(services, clip)
        deadline = time.monotonic() + 30
        states = {
            (name, clip): await settled(services, clip, timeout=deadline - time.monotonic())
            for name, services in (("first-worker", one), ("second-worker", two))
            for clip in ("c1", "c2", "c3")
        }
    assert {key: (state.status, state.worker_id, state.attempt) for key, state in states.items()} == {
        key: ("completed", key[0], 1) for key in states
    }


async def test_health_counts_only_the_workers_of_its_own_deployment(settings_for):
    from litestar.testing import AsyncTestClient

    from runtime.bootstrap import web_app

    first, second = await settings_for(), await settings_for()
    async with running_worker(second, name="second-worker") as two:  # it announces itself, as `cliplog worker` does
        presence = presence_prefix(await store.epoch(two.pool)) + "second-worker"
        async with asyncio.timeout(10):
            while not await two.redis.exists(presence):
                await asyncio.sleep(0.01)
        alive = {}
        for name, settings in (("first", first), ("second", second)):
            async with AsyncTestClient(app=web_app(settings)) as http:
                alive[name] = (await http.get("/api/extraction/health")).json()["workers"]["alive"]
    assert alive == {"first": 0, "second": 1}


# 8. A worker that died between taking a job and starting its attempt ------------------------------------------


async def release(doomed: Worker, never: asyncio.Event, services: Services) -> None:
    """Let the dead worker's job end and close what the test opened."""
    never.set()
    await asyncio.gather(*doomed.tasks.values(), return_exceptions=True)
    await doomed.pool.aclose(close_connection_pool=True)
    await services.close()


async def taken_over_after_reaping(settings: Settings, services: Services) -> ClipState:
    """With the reaper running, a healthy worker takes clip c1 over: its state once settled."""
    reaping = asyncio.create_task(reaper.follow(services))
    try:
        async with running_worker(settings) as healthy:
            return await settled(healthy, "c1", timeout=15)
    finally:
        reaping.cancel()
        await asyncio.gather(reaping, return_exceptions=True)


async def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_enqueued_again_within_requeue_after(
    settings_for,
):
    settings = await settings_for(requeue_after=1.0, reaper_interval=0.2, dispatch="fifo")
    services = await open_services(settings, pool_size=4)
    queue = await reactor.job_queue(services.pool)
    taken, never = asyncio.Event(), asyncio.Event()

    async def dies_before_starting(ctx: dict, *args: object) -> None:
        taken.set()
        await never.wait()  # this worker is gone: it never starts the attempt, never finishes the job

    doomed = Worker(functions=[func(dies_before_starting, name=reactor.EXTRACT_JOB)], queue_name=queue.name,
                    redis_settings=redis_settings(settings), handle_signals=False, poll_delay=0.05)
    doomed_polling = asyncio.create_task(doomed.main())
    try:
        await register(services, "c1")
        await reactor.react_once(services)  # the reactor's enqueue
        async with asyncio.timeout(10):
            await taken.wait()
        doomed_polling.cancel()  # it takes nothing more; its job stays "in progress" in Redis
        await asyncio.gather(doomed_polling, return_exceptions=True)
        job = queue.job_id("p", "c1", 1, 1)
        assert await services.redis.exists(in_progress_key_prefix + job)
        assert await services.redis.pttl(in_progress_key_prefix + job) > 60_000  # arq's job_timeout + 10 s

        state = await taken_over_after_reaping(settings, services)
        assert (state.status, state.attempt, state.worker_id) == ("completed", 1, "test-worker")
    finally:
        await release(doomed, never, services)


async def test_with_fair_dispatch_a_job_a_dead_worker_took_and_never_started_is_admitted_again(settings_for):
    """The dispatcher counts the job as admitted while it is in the queue; the reaper takes it out once a worker has
    held it "in progress" for `requeue_after` without starting its attempt, and the next pass admits it again."""
    settings = await settings_for(requeue_after=1.0, reaper_interval=0.2)
    services = await open_services(settings, pool_size=4)
    queue = await reactor.job_queue(services.pool)
    taken, never = asyncio.Event(), asyncio.Event()

    async def dies_before_starting(ctx: dict, *args: object) -> None:
        taken.set()
        await never.wait()

    doomed = Worker(functions=[func(dies_before_starting, name=reactor.EXTRACT_JOB)], queue_name=queue.name,
                    redis_settings=redis_settings(settings), handle_signals=False, poll_delay=0.05,
                    job_timeout=reactor.job_timeout(settings))  # fmt: skip
    presence = presence_prefix(queue.epoch) + "doomed"
    await services.redis.set(presence, "1", ex=60)  # its one slot
    doomed_polling = asyncio.create_task(doomed.main())
    try:
        await register(services, "c1")
        await dispatcher.Dispatcher().step(services)  # admitted into that slot
        async with asyncio.timeout(10):
            await taken.wait()
        doomed_polling.cancel()
        await asyncio.gather(doomed_polling, return_exceptions=True)
        await services.redis.delete(presence)  # the worker is gone
        job = queue.job_id("p", "c1", 1, 1)
        assert await services.redis.exists(in_progress_key_prefix + job)
        state = await taken_over_after_reaping(settings, services)
        assert (state.status, state.attempt, state.worker_id) == ("completed", 1, "test-worker")
    finally:
        await release(doomed, never, services)


# 6. No blocking file I/O on the worker's event loop ---------------------------------------------------------------


async def test_reading_a_source_that_blocks_does_not_block_the_event_loop(settings_for, tmp_path):
    """A source whose reads block (a FIFO no one writes yet stands in for slow storage: opening it blocks). The
    writer end is opened only once the event loop has run other work meanwhile, or after 5 s if it could not."""
    settings = await settings_for(media_root=tmp_path)
    fifo = tmp_path / "slow.mp4"
    os.mkfifo(fifo)
    loop_ran = threading.Event()
    released_by_loop: list[bool] = []

    def slow_storage() -> None:
        released_by_loop.append(loop_ran.wait(5))
        with open(fifo, "wb"):
            pass  # the reader's open returns; it reads an empty file

    storage = threading.Thread(target=slow_storage)
    storage.start()
    probing = asyncio.create_task(extraction.source_info(fifo, settings, timeout=5))
    try:
        for _ in range(10):
            await asyncio.sleep(0)  # the probe starts and blocks on the FIFO ... in a thread, not here
        loop_ran.set()
    finally:
        await asyncio.to_thread(storage.join)
        probing.cancel()
        await asyncio.gather(probing, return_exceptions=True)
    assert released_by_loop == [True]


# 5. Copy mode on a source whose keyframes are far apart --------------------------------------------------------


def keyframes_by_ffprobe(path: Path) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries",
         "frame=pts_time", "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True,
    ).stdout
    return [float(line.strip().rstrip(",")) for line in out.split()]


def test_the_mp4_reader_finds_the_keyframes_ffprobe_finds(source_root):
    info = mp4.read_info(source_root / "sparse.mp4")
    assert info is not None and info.keyframes is not None
    expected = keyframes_by_ffprobe(source_root / "sparse.mp4")
    assert len(expected) >= 3 and expected[1] - expected[0] > 8  # the source is what this test needs
    assert info.keyframes == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(("start", "end"), [(5.0, 7.0), (9.0, 11.0), (14.0, 16.0)])
async def test_a_copy_cut_far_from_a_keyframe_completes_at_the_first_attempt(settings_for, start, end):
    settings = await settings_for()
    async with running_worker(settings) as services:
        await register(services, "c1", source="sparse.mp4", start=start, end=end, mode="copy")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error
    info = mp4.read_info(settings.output_root / state.output)
    keyframe = max(k for k in keyframes_by_ffprobe(settings.media_root / "sparse.mp4") if k <= start)
    # a stream copy starts at the keyframe at or before `start`, up to 8.3 s earlier than asked
    assert info is not None and info.duration == pytest.approx(end - keyframe, abs=0.5)
    assert state.duration_seconds == pytest.approx(info.duration, abs=0.001)


async def test_a_result_that_fails_validation_is_not_retried(settings_for, tmp_path):
    """The same FFmpeg on the same source gives the same wrong result: one attempt, then failed."""
    wrong = script(tmp_path / "short.sh", f"""for arg; do case "$arg" in */.tmp-*) target="$arg";; esac; done
exec "{FFMPEG}" -hide_banner -loglevel error -nostdin -y -f lavfi -i testsrc2=size=64x64:rate=25 -t 0.3 \
    -c:v libx264 -preset ultrafast -f mp4 "$target"
""")
    settings = await settings_for(ffmpeg=wrong)
    async with running_worker(settings) as services:
        await register(services, "c1", start=1.0, end=3.0, mode="accurate")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "output_invalid")]
    assert state.status == "failed" and state.last_error is not None and state.last_error.retryable is False
    assert "1.50–2.50 s was expected" in state.last_error.message


# A worker lost between publishing its file and recording `completed` (found by `cliplog soak`) ---------------------


async def test_the_reaper_removes_the_file_a_lost_worker_published_but_never_recorded(settings_for):
    settings = await settings_for(lease_timeout=1.0)
    services = await open_services(settings, pool_size=4)
    try:
        await register(services, "c1")
        await clips.start_attempt(services.pool, "p", "c1", Start(run=1, attempt=1, worker_id="lost"), services.context)
        published = settings.output_root / extraction.attempt_output("p", "c1", 1, 1)
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_bytes(b"a whole clip whose completed was never recorded")
        other = settings.output_root / extraction.attempt_output("p", "c2", 1, 1)  # another clip's: left alone
        other.write_bytes(b"another clip")
        await services.pool.execute("UPDATE leases SET renewed_at = now() - interval '1 minute'")
        assert await reaper.time_out_lost_attempts(services) == 1
        state = await clip_status.load(services.pool, "p", "c1")
        assert (state.status, state.last_error.code if state.last_error else None) == ("retrying", "timed_out")
        assert not published.exists() and other.exists()
    finally:
        await services.close()


# Local storage keeps its behaviour from before S3 storage ---------------------------------------------------------


@pytest.mark.parametrize("source", ["./match.mp4", "sub//match.mp4"])
async def test_a_local_source_the_old_api_accepted_still_runs(settings_for, source_root, source):
    """The S3 key rule (storage/keys.py) is the API's for new registrations and the worker's for objects only: a
    local clip registered before it, with a path `resolve_inside` accepts, still completes."""
    (source_root / "sub").mkdir(exist_ok=True)
    if not (source_root / "sub" / "match.mp4").exists():
        (source_root / "sub" / "match.mp4").symlink_to(source_root / "match.mp4")
    settings = await settings_for()
    async with running_worker(settings) as services:
        await register(services, "c1", source=source)
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error


async def test_a_local_cut_finishing_just_before_its_deadline_is_published(settings_for, tmp_path):
    """Less than the storage margin (1 s) left when a local cut is done: its rename is not a storage call that
    could hang, so it is published and recorded (it used to fail storage_unavailable)."""
    release = tmp_path / "release"
    held = script(tmp_path / "held.sh", f""""{FFMPEG}" "$@" || exit $?
while [ ! -e "{release}" ]; do sleep 0.02; done
""")
    settings = await settings_for(ffmpeg=held, attempt_timeout=4.0)
    async with running_worker(settings) as services:
        await register(services, "c1", start=1.0, end=2.0, mode="copy")
        while (state := await clip_status.load(services.pool, "p", "c1")).deadline_at is None:
            await asyncio.sleep(0.02)
        # released 0.9 s before the deadline: the cut ends with less than STORAGE_MARGIN left
        wait = (state.deadline_at - utcnow()).total_seconds() - 0.9
        assert wait > 0
        await asyncio.sleep(wait)
        release.touch()
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error
    assert (settings.output_root / state.output).exists()


async def test_the_reaper_appends_every_timeout_before_removing_outputs_and_a_hung_store_holds_it_briefly(
    settings_for, monkeypatch
):
    """The outputs of timed-out attempts are removed after every timeout is appended, and within CLEANUP_TIMEOUT
    in all (it used to delete after each timeout, up to 5 s each against a hung store)."""
    from storage.local import LocalStorage

    monkeypatch.setattr(extraction, "CLEANUP_TIMEOUT", 0.3)
    settings = await settings_for(lease_timeout=1.0)
    seen: list[int] = []  # timeouts in the log when each deletion began

    class HungStore(LocalStorage):
        async def delete_output(self, name: str) -> None:
            seen.append(await services.pool.fetchval("SELECT count(*) FROM events WHERE type = 'extraction.timed_out'"))
            await asyncio.Event().wait()  # never answers

    services = await open_services(settings, pool_size=4, storage=HungStore(settings.media_root, settings.output_root))
    try:
        for clip in ("c1", "c2", "c3"):
            await register(services, clip)
            await clips.start_attempt(services.pool, "p", clip, Start(run=1, attempt=1, worker_id="lost"), services.context)
        await services.pool.execute("UPDATE leases SET renewed_at = now() - interval '1 minute'")
        assert await reaper.time_out_lost_attempts(services) == 3
        assert seen == [3, 3, 3]
        for clip in ("c1", "c2", "c3"):
            assert (await clip_status.load(services.pool, "p", clip)).status == "retrying"
    finally:
        await services.close()


# A slot frees when its cut ends -----------------------------------------------------------------------------------


async def job_worker(services: Services, queue_name: str, job: Callable, *, slots: int) -> WakeableWorker:
    """A `WakeableWorker` of `slots` slots running `job` (as "job", tried once) from `queue_name`, connected, with
    the context `cliplog worker` gives its jobs (`cut_done`, `shutting_down`); its polls are run by the test."""
    worker = WakeableWorker(
        functions=[func(job, name="job", max_tries=1)], queue_name=queue_name,
        ctx={"services": services, "shutting_down": asyncio.Event()}, handle_signals=False, max_jobs=holds(slots),
        slots=slots, keep_result=0, retry_jobs=False,
    )  # fmt: skip
    worker.ctx["cut_done"] = worker.cut_done
    await worker.connect()
    return worker


async def test_a_slot_takes_its_next_job_when_its_cut_ends_and_never_more_than_it_holds(settings_for):
    """One slot: a job holds it until it says its FFmpeg exited (`cut_done`) or ends; the next job is taken then,
    while the first still runs its bookkeeping; arq's `max_jobs` (`holds(1)` = 2) bounds the jobs in the process.
    Each poll is run by hand, so what a poll did not take is known, not waited for."""
    services = await open_services(await settings_for(), pool_size=2)
    queue_name = f"test-slots-{os.getpid()}-{time.monotonic_ns()}"
    begun: dict[str, asyncio.Event] = {}
    finish: dict[str, asyncio.Event] = {}

    async def job(ctx: dict, name: str, says_cut_done: bool) -> None:
        begun[name].set()
        if says_cut_done:
            ctx["cut_done"](ctx["job_id"])
        await finish[name].wait()

    worker = await job_worker(services, queue_name, job, slots=1)
    redis = worker.pool
    try:
        for name, says in [("a", False), ("b", True), ("c", True), ("d", True)]:
            begun[name], finish[name] = asyncio.Event(), asyncio.Event()
            await redis.enqueue_job("job", name, says, _job_id=name, _queue_name=queue_name)

        async def taken(name: str) -> bool:
            return bool(await redis.exists(in_progress_key_prefix + name))

        await worker._poll_iteration()  # noqa: SLF001
        await asyncio.wait_for(begun["a"].wait(), 10)
        await worker._poll_iteration()  # noqa: SLF001 - a still cuts: nothing more is taken
        assert not await taken("b") and worker.job_counter == 1

        finish["a"].set()  # a ends without saying its cut ended: its end frees the slot
        await asyncio.wait_for(worker.tasks["a"], 10)
        await worker._poll_iteration()  # noqa: SLF001
        await asyncio.wait_for(begun["b"].wait(), 10)  # b says its cut ended at once, and keeps running
        await worker._poll_iteration()  # noqa: SLF001
        await asyncio.wait_for(begun["c"].wait(), 10)  # c runs beside b: the slot took it when b's cut ended
        assert not finish["b"].is_set() and not worker.tasks["b"].done()

        await worker._poll_iteration()  # noqa: SLF001 - no cut runs, but b and c are all it holds
        assert not await taken("d") and worker.job_counter == 2
    finally:
        for event in finish.values():
            event.set()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await redis.delete(queue_name, *(job_key_prefix + n for n in "abcd"), *(in_progress_key_prefix + n for n in "abcd"))
        await worker.pool.aclose(close_connection_pool=True)
        await services.close()


async def test_a_worker_takes_no_job_once_its_shutdown_began(settings_for):
    """A shutdown (`_shut_down`, which first of all sets `allow_pick_jobs = False`) may begin while a poll awaits
    Redis taking a job (one call reads the queue and takes the first due job). Nothing more is taken from then on.
    Each poll is run by hand, and the shutdown begins inside the Redis call, as soon as that call has answered."""
    services = await open_services(await settings_for(), pool_size=2)
    queue_name = f"test-shutdown-{os.getpid()}-{time.monotonic_ns()}"
    finish = asyncio.Event()

    async def job(ctx: dict, name: str) -> None:
        await finish.wait()

    worker = await job_worker(services, queue_name, job, slots=2)
    redis = worker.pool

    def shutdown_begins_after(call):  # noqa: ANN001, ANN202 - a Redis call, and the same call
        async def then_shutdown(*args: object, **kwargs: object) -> object:
            try:
                return await call(*args, **kwargs)
            finally:
                worker.allow_pick_jobs = False  # what `_shut_down` does first

        return then_shutdown

    try:
        for name in "ab":
            await redis.enqueue_job("job", name, _job_id=name, _queue_name=queue_name)
        worker._take = shutdown_begins_after(worker._take)  # noqa: SLF001
        await worker._poll_iteration()  # noqa: SLF001
        assert sorted(worker.tasks) == ["a"]  # the one that call took; two slots were free
        assert worker.job_counter == len(worker.tasks)
    finally:
        finish.set()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await redis.delete(queue_name, *(job_key_prefix + n for n in "ab"), *(in_progress_key_prefix + n for n in "ab"))
        await worker.pool.aclose(close_connection_pool=True)
        await services.close()


async def test_a_poll_takes_a_due_job_no_worker_holds_in_one_redis_call(settings_for):
    """One call per job taken, the queue's reading included (arq reads, then takes in a transaction); the jobs other
    workers hold (their in-progress keys) are passed over, however many come first (more than one read of the queue
    holds: arq's `queue_read_limit`), and one not due yet is not taken."""
    services = await open_services(await settings_for(), pool_size=2)
    queue_name = f"test-take-{os.getpid()}-{time.monotonic_ns()}"
    finish = asyncio.Event()

    async def job(ctx: dict, name: str) -> None:
        await finish.wait()

    worker = await job_worker(services, queue_name, job, slots=1)
    redis = worker.pool
    calls: list[str] = []
    execute = redis.execute_command

    async def counted(*args: object, **kwargs: object) -> object:
        calls.append(str(args[0]).upper())
        return await execute(*args, **kwargs)

    held = [f"held-{i}" for i in range(worker.queue_read_limit + 1)]
    try:
        await worker._poll_iteration()  # noqa: SLF001 - nothing due; the script is loaded
        await redis.enqueue_job("job", "later", _job_id="later", _queue_name=queue_name, _defer_by=3600)
        for n in held:
            await redis.enqueue_job("job", n, _job_id=n, _queue_name=queue_name)
            await redis.psetex(in_progress_key_prefix + n, 60_000, "1")  # other workers'
        await redis.enqueue_job("job", "free", _job_id="free", _queue_name=queue_name)
        now = int(time.time() * 1000)  # the held ones first in the queue, "free" after all of them
        await redis.zadd(queue_name, {**{n: now - 10_000 + i for i, n in enumerate(held)}, "free": now - 1})
        redis.execute_command = counted
        await worker._poll_iteration()  # noqa: SLF001
        redis.execute_command = execute
        assert list(worker.tasks) == ["free"]
        assert [c for c in calls if c in ("ZRANGEBYSCORE", "EVALSHA", "EVAL", "WATCH", "MULTI")] == ["EVALSHA"]
    finally:
        redis.execute_command = execute
        finish.set()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        names = ("later", *held, "free")
        await redis.delete(queue_name, *(job_key_prefix + n for n in names), *(in_progress_key_prefix + n for n in names))
        await worker.pool.aclose(close_connection_pool=True)
        await services.close()


async def test_a_job_taken_while_the_shutdown_begins_is_given_the_grace_and_handed_back(settings_for):
    """The shutdown begins while a take is under way in Redis (inside the call, once Redis has answered). The job
    taken is one of those the shutdown waits for and hands back: cancelled with `shutting_down` set. (Before, the
    shutdown listed the running jobs at once, without it: the job ran on unseen until the process exited.)"""
    services = await open_services(await settings_for(), pool_size=2)
    queue_name = f"test-shutdown-take-{os.getpid()}-{time.monotonic_ns()}"
    handed_back: list[bool] = []

    async def job(ctx: dict, name: str) -> None:
        try:
            await asyncio.Event().wait()  # an extraction that outlasts the grace
        except asyncio.CancelledError:
            handed_back.append(ctx["shutting_down"].is_set())
            raise

    worker = await job_worker(services, queue_name, job, slots=1)
    redis = worker.pool
    polling = asyncio.create_task(asyncio.Event().wait())  # stands for the polling task, which the shutdown stops
    shutdown: list[asyncio.Task] = []
    take = worker._take  # noqa: SLF001

    async def take_then_shut_down(*args: object, **kwargs: object) -> object:
        taken = await take(*args, **kwargs)
        shutdown.append(asyncio.create_task(_shut_down(worker, polling, grace=0.2)))
        while worker.allow_pick_jobs:  # the shutdown has begun before this take returns
            await asyncio.sleep(0)
        return taken

    try:
        await redis.enqueue_job("job", "a", _job_id="a", _queue_name=queue_name)
        worker._take = take_then_shut_down  # noqa: SLF001
        await worker._poll_iteration()  # noqa: SLF001
        assert list(worker.tasks) == ["a"]
        await asyncio.wait_for(shutdown[0], 30)
        assert handed_back == [True]
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await redis.delete(queue_name, job_key_prefix + "a", in_progress_key_prefix + "a")
        await worker.pool.aclose(close_connection_pool=True)
        await services.close()


async def test_a_job_cancelled_while_it_records_its_outcome_still_records_it(settings_for, monkeypatch):
    """A shutdown past its grace, or arq's job timeout, may cancel a job while it appends its outcome: the append
    goes on to its end, then the job ends cancelled (before, the append was cut off, and the reaper timed the
    finished attempt out and used it up). The outcome's append is held at its start until the job is cancelled."""
    services = await open_services(await settings_for(), pool_size=4)
    entered, go_on = asyncio.Event(), asyncio.Event()
    real_handle = extraction.handle

    async def held_handle(pool, project_id, clip_id, command, context, **options):  # noqa: ANN001, ANN202 - as `handle`
        if isinstance(command, Fail):
            entered.set()
            await go_on.wait()
        return await real_handle(pool, project_id, clip_id, command, context, **options)

    monkeypatch.setattr(extraction, "handle", held_handle)
    try:
        await register(services, "a", source="no-such-source.mp4")  # its attempt fails at once: the outcome a Fail
        job = asyncio.create_task(extraction.extract(services, "p", "a", 1, 1, "w1", asyncio.Event()))
        await asyncio.wait_for(entered.wait(), 10)
        job.cancel()  # while the append waits
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(job, 10)
        assert await outcomes(services, "a") == [(1, "failed", "source_missing")]
    finally:
        go_on.set()
        await services.close()


async def test_an_attempt_that_fails_before_any_ffmpeg_ran_frees_its_slot_before_its_outcome_is_recorded(
    settings_for,
):
    """One slot. Clip a's source is missing: its attempt fails before any FFmpeg runs, and its bookkeeping is held
    up (another transaction holds a's row, as a slow commit would: its `started` waits). The slot is free all the
    same: b is taken, cut and completed while a's attempt is still unrecorded; a fails once its row is let go."""
    settings = await settings_for()
    before = await open_services(settings, pool_size=1)
    try:
        await register(before, "a", source="no-such-source.mp4")
    finally:
        await before.close()
    holder = await asyncpg.connect(settings.database_url)
    holding = holder.transaction()
    await holding.start()
    try:
        await holder.execute("SELECT FROM clips WHERE project_id = 'p' AND clip_id = 'a' FOR UPDATE")
        async with running_worker(settings, concurrency=1) as services:
            try:
                await until_blocked_by(holder, services)  # the worker took a: its `started` waits for the row
                await register(services, "b")
                state = await settled(services, "b", timeout=15)
                assert (state.status, await outcomes(services, "a")) == ("completed", []), state.last_error
            finally:
                await holding.rollback()
            assert (await settled(services, "a")).status == "failed"
            assert await outcomes(services, "a") == [(1, "failed", "source_missing")]
    finally:
        await holder.close()


async def until_blocked_by(holder: asyncpg.Connection, services: Services, timeout: float = 10) -> None:
    """Until a statement of another session waits for a lock `holder` holds."""
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
    while not await services.pool.fetchval(query, holder.get_server_pid()):
        assert time.monotonic() < deadline, f"nothing waited for the held lock in {timeout} s"
        await asyncio.sleep(0.02)
