"""The extraction job: start the attempt, cut with FFmpeg under its deadline, validate, publish, record.

Result files are written under a temporary name (local storage: in the clip's project folder; S3: in
`<data dir>/cutting`), validated (it opens, has video, has the expected duration), then published under a name
unique to the attempt (`Storage.put_output`: fsynced and renamed; or one PUT, checked against the store's size and
ETag). A result that arrives after its attempt stopped being current is discarded together with its file or object.

With S3 storage the source is never downloaded: it is probed with ranged reads (the MP4's box headers and its
`moov` box, once per key and ETag), and FFmpeg reads it through a presigned URL valid until the attempt's deadline,
with HTTP range requests. Every storage call is bounded by the attempt's time left; a store that cannot be reached,
answers 5xx or times out fails the attempt `storage_unavailable` (retried), a refusal or a missing bucket
`storage_denied`, a missing key `source_missing` (neither retried).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Awaitable, Callable
from pathlib import Path

from domain.clip import ClipState, Command, Complete, Fail, HandBack, Start, TimeOut
from domain.errors import StaleAttempt
from domain.policy import attempt_deadline_seconds, is_retryable
from handlers import ffmpeg, mp4
from handlers.progress import ProgressReporter
from projections import clip_status
from runtime.media import resolve_inside
from runtime.settings import Settings
from storage.base import Storage, StorageDenied, StorageError, StorageUnavailable, StoredObject
from storage.keys import source_key_problem
from storage.local import LocalStorage
from usecases.clips import handle, renew_lease, start_attempt
from usecases.services import DEPENDENCY_ERRORS, Services, utcnow

log = logging.getLogger("cliplog.extraction")

TEMP_PREFIX = ".tmp-"


def attempt_output(project_id: str, clip_id: str, run: int, attempt: int) -> str:
    """Where attempt `run`.`attempt` of a clip publishes its file, under the output root."""
    return f"{project_id}/{clip_id}.r{run}a{attempt}.mp4"


def output_name(state: ClipState) -> str:
    return attempt_output(state.project_id, state.clip_id, state.run, state.attempt)


_OUTPUT_NAME = re.compile(r"(?P<project>[A-Za-z0-9_-]{1,64})/(?P<clip>[A-Za-z0-9_-]{1,64})\.r[0-9]+a[0-9]+\.mp4")


def output_clip(name: str) -> tuple[str, str] | None:
    """`(project_id, clip_id)` of an output named by `output_name`; None for any other name."""
    match = _OUTPUT_NAME.fullmatch(name)
    return (match["project"], match["clip"]) if match else None


_SOURCE_INFO: dict[tuple[str, int, int], ffmpeg.MediaInfo] = {}
_SOURCE_INFO_LIMIT = 512


def cutting_root(settings: Settings) -> Path:
    """Where a worker with remote storage writes its cuts before uploading them."""
    return settings.data_dir / "cutting"


def shown(settings: Settings) -> ffmpeg.Shown:
    """How a run's command and stderr name the roots in an attempt's outcome (never their absolute paths)."""
    return ffmpeg.Shown({
        str(settings.media_root): "$CLIPLOG_MEDIA_ROOT",
        str(settings.output_root): "$CLIPLOG_OUTPUT_ROOT",
        str(cutting_root(settings)): "$CLIPLOG_DATA_DIR/cutting",
    })  # fmt: skip


STORAGE_MARGIN = 1.0  # seconds of an attempt's time left that no storage call may use (to record the outcome)
CLEANUP_TIMEOUT = 5.0  # seconds a best-effort delete of a discarded object may take


class OutOfTime(StorageUnavailable):
    """`bounded` stopped a storage call (or did not start it) for the attempt's deadline: the store gave no answer
    of its own."""


async def bounded(call, deadline: float, what: str):  # noqa: ANN001, ANN201 - an awaitable and its result
    """Await a storage call, but not past `deadline` (a `time.monotonic()`) minus the margin: a slow store
    cannot hold an attempt past its deadline. Raises OutOfTime (StorageUnavailable, retryable) when it takes too
    long."""
    left = deadline - time.monotonic() - STORAGE_MARGIN
    if left <= 0:
        if asyncio.iscoroutine(call):
            call.close()
        raise OutOfTime(f"No time was left before the attempt's deadline for {what}.")
    limit = asyncio.timeout(left)
    try:
        async with limit:
            return await call
    except TimeoutError:
        if not limit.expired():  # the call's own timeout (ETIMEDOUT, say): the store's failure, not the deadline's
            raise
        raise OutOfTime(f"The store did not answer {what} within {left:.1f} s (the attempt's time left).") from None


async def discard_output(storage: Storage, name: str) -> None:
    """Remove a published output no `completed` event will point at, best effort (the orphan sweep catches a
    failure)."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await storage.delete_output(name)
    except (StorageError, TimeoutError, OSError) as error:
        log.warning("could not remove the discarded output %s (%s); the orphan sweep will", name, error)


_REMOTE_INFO: dict[tuple[str, str, str, int], ffmpeg.MediaInfo] = {}


async def remote_source_info(
    storage: Storage, head: StoredObject, source: object, settings: Settings, timeout: float
) -> ffmpeg.MediaInfo:
    """Probe a remote source once per version of the object (its key and ETag): the MP4's boxes through ranged
    reads (box headers and the moov box, never the media data), else FFmpeg through the presigned URL."""
    where = getattr(getattr(storage, "config", None), "bucket", storage.backend)
    key = (str(where), head.key, head.etag, head.size)
    info = _REMOTE_INFO.get(key)
    if info is None:

        async def read_at(offset: int, length: int) -> bytes:
            return b"".join([chunk async for chunk in storage.read_source(head.key, offset, length)])

        info = await mp4.read_info_ranged(read_at, head.size) or await ffmpeg.probe(
            source, ffmpeg=settings.ffmpeg, ffprobe=settings.ffprobe, timeout=timeout, shown=shown(settings)  # type: ignore[arg-type]
        )
        if len(_REMOTE_INFO) >= _SOURCE_INFO_LIMIT:
            _REMOTE_INFO.pop(next(iter(_REMOTE_INFO)))
        _REMOTE_INFO[key] = info
    return info


# What FFmpeg says about its HTTP input only: "Server returned ..." and "HTTP error ..." come from its http
# protocol alone; the generic network words count only on lines of the HTTP/TCP/TLS layers or of the (remote)
# input ("[in#0 @ ...]", or FFmpeg 6 and older naming its URL: "http://...: Connection reset by peer"), never on an
# output's ("[out#0/mp4 @ ...] Error writing trailer: Input/output error" is the local disk's).
_REFUSED = re.compile(r"Server returned 40[13]|HTTP error 40[13]|^\[https? @ [^\]]*\].*(?:403 Forbidden|401 Unauthorized)",
                      re.IGNORECASE | re.MULTILINE)  # fmt: skip
_LOST = (r"(?:Connection refused|Connection reset|Connection timed out|Operation timed out|timed out|Broken pipe|"
         r"Stream ends prematurely|"
         r"Network is unreachable)")  # fmt: skip
_ENDED = r"(?:End of file|Input/output error|Error number -\d+ occurred)"
_PROTOCOL_LINE = r"^\[(?:https?|tcp|tls) @ [^\]]*\].*"
_INPUT_LINE = r"^(?:\[in#\d+(?:/[^ \]]*)? @ [^\]]*\]|https?://\S+:) .*"
_CONNECTION_LOST = re.compile(
    rf"Server returned 5[0-9][0-9]|HTTP error 5[0-9][0-9]|{_PROTOCOL_LINE}(?:{_LOST}|{_ENDED})|{_INPUT_LINE}{_LOST}",
    re.IGNORECASE | re.MULTILINE,
)
_INPUT_ENDED = re.compile(_INPUT_LINE + _ENDED, re.IGNORECASE | re.MULTILINE)


async def storage_failure(
    storage: Storage, key: str, deadline: float, error: ffmpeg.ExtractionError
) -> StorageError | None:
    """Whether FFmpeg failed reading a remote source because of the store: the store's own answer to a HEAD of
    the source (unreachable, refused, missing), else what FFmpeg said about its HTTP input. None: FFmpeg's own
    failure, recorded with its own code (also when no time was left to ask the store: no answer is no verdict)."""
    try:
        await bounded(storage.head_source(key), min(deadline, time.monotonic() + 3 + STORAGE_MARGIN), f"reading {key!r}")
    except OutOfTime:
        pass
    except StorageError as failure:
        return failure
    said = (error.stderr_tail or "") + "\n" + error.message
    locate = getattr(storage, "source_location", None)
    where = locate(key) if locate is not None else repr(key)
    if _REFUSED.search(said):
        return StorageDenied(f"The store refused FFmpeg's read of {where} ({error.message}).")
    # An input that ended early is the store's only once the source was probed as a video: of a probe's failure
    # (`not_a_video`), "[in#0 @ ...] Error opening input: End of file" is as likely a source cut short.
    if _CONNECTION_LOST.search(said) or (error.code != "not_a_video" and _INPUT_ENDED.search(said)):
        return StorageUnavailable(f"FFmpeg lost its connection to the store reading {where} ({error.message}).")
    return None


async def source_info(path: Path, settings: Settings, timeout: float) -> ffmpeg.MediaInfo:
    """Probe a source once per version of the file (clips of one source share it): the MP4 boxes when they can be
    read, else FFmpeg."""
    stat = await asyncio.to_thread(path.stat)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    info = _SOURCE_INFO.get(key)
    if info is None:
        info = await read_mp4_info(path) or await ffmpeg.probe(
            path, ffmpeg=settings.ffmpeg, ffprobe=settings.ffprobe, timeout=timeout, shown=shown(settings)
        )
        if len(_SOURCE_INFO) >= _SOURCE_INFO_LIMIT:
            _SOURCE_INFO.pop(next(iter(_SOURCE_INFO)))
        _SOURCE_INFO[key] = info
    return info


async def read_mp4_info(path: Path) -> ffmpeg.MediaInfo | None:
    """`mp4.read_info` in a thread: it reads a moov box of up to 64 MiB, which must not stall the heartbeats."""
    return await asyncio.to_thread(mp4.read_info, path)


DURATION_TOLERANCE = 0.5  # seconds either way: frame and audio-packet boundaries, composition offsets


def expected_duration(state: ClipState, source: ffmpeg.MediaInfo) -> tuple[float, float]:
    """The shortest and longest result a correct cut of `state` can have. A stream copy starts at the keyframe at
    or before `start` (from the source's keyframe index; at 0 s when there is none), so it may run up to a whole
    GOP longer than asked; an accurate cut is as long as asked."""
    end = min(state.end, source.duration or state.end)
    first = source.keyframe_at_or_before(state.start) if state.mode == "copy" else state.start
    return end - state.start - DURATION_TOLERANCE, end - first + DURATION_TOLERANCE


async def produce_clip(
    services: Services, state: ClipState, time_left: float, on_report: ffmpeg.OnReport | None = None,
    cut_done: Callable[[], None] | None = None,
) -> Complete:
    """Cut `state`'s current attempt into its final file or object, handing FFmpeg's progress reports to
    `on_report` and calling `cut_done` (idempotent) once FFmpeg has exited: its worker slot may cut the next clip
    while this one is validated, made durable or uploaded, and recorded. Raises ffmpeg.ExtractionError (storage
    errors among them, with their codes), ffmpeg.Deadline or (no progress for CLIPLOG_STALL_AFTER seconds)
    ffmpeg.Stalled."""
    try:
        return await _produce(services, services.store, state, time_left, on_report, cut_done)
    except StorageError as error:
        raise ffmpeg.ExtractionError(error.code, error.message) from None
    finally:
        if cut_done is not None:
            cut_done()  # also when it failed before any FFmpeg ran: the slot is free before the outcome's append


async def _produce(
    services: Services, storage: Storage, state: ClipState, time_left: float, on_report: ffmpeg.OnReport | None,
    cut_done: Callable[[], None] | None = None,
) -> Complete:
    settings = services.settings
    began = time.monotonic()
    deadline = began + time_left
    local = isinstance(storage, LocalStorage)
    source: Path | object
    if local:
        source = resolve_inside(storage.media_root, state.source)
        if source is None:
            raise ffmpeg.ExtractionError(
                "source_missing", f"The source video {state.source!r} does not exist in the media folder."
            )
        info = await source_info(source, settings, timeout=max(0.1, deadline - time.monotonic()))
    else:
        # The key rule for objects (the API applies it to new registrations; a local source keeps the path rule it
        # was accepted under, `resolve_inside`, so clips registered before the rule still run).
        problem = source_key_problem(state.source)
        if problem is not None:
            raise ffmpeg.ExtractionError("source_missing", f"The source {state.source!r} cannot be read: {problem}.")
        head = await bounded(storage.head_source(state.source), deadline, f"reading {state.source!r}")
        # The URL stays valid until the attempt's deadline (and a little after: FFmpeg's last reads near it).
        url = await bounded(
            storage.source_input(state.source, time_left + 60), deadline, f"signing a URL for {state.source!r}"
        )
        source = ffmpeg.remote(url, state.source)
        try:
            info = await bounded(
                remote_source_info(storage, head, source, settings, timeout=max(0.1, deadline - time.monotonic())),
                deadline,
                f"probing {state.source!r}",
            )
        except ffmpeg.ExtractionError as error:  # ffprobe over the URL (no MP4 boxes to read): the store's fault?
            failure = await storage_failure(storage, state.source, deadline, error)
            if failure is None:
                raise
            raise ffmpeg.ExtractionError(
                failure.code, failure.message, command=error.command, stderr_tail=error.stderr_tail
            ) from None
    if not info.has_video:
        raise ffmpeg.ExtractionError("not_a_video", f"The source {state.source!r} has no video stream.")
    if info.duration and (state.start >= info.duration or state.end > info.duration + 0.5):
        raise ffmpeg.ExtractionError(
            "range_past_end",
            f"The clip {state.start:g}–{state.end:g} s lies past the end of {state.source!r}, "
            f"which is {info.duration:.1f} s long.",
        )
    name = output_name(state)
    folder = (storage.output_root if local else cutting_root(settings)) / state.project_id  # type: ignore[attr-defined]
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    temporary = folder / f"{TEMP_PREFIX}{state.clip_id}.r{state.run}a{state.attempt}.{secrets.token_hex(4)}.mp4"
    uploading = False
    try:
        try:
            said = await ffmpeg.cut(
                ffmpeg=settings.ffmpeg,
                source=source,  # type: ignore[arg-type]
                start=state.start,
                end=state.end,
                mode=state.mode,
                target=temporary,
                timeout=max(0.1, deadline - time.monotonic()),
                shown=shown(settings),
                watch=ffmpeg.Watch(on_report or (lambda _: None), settings.stall_after),
                input_options=None if local else ffmpeg.remote_input_options(
                    await asyncio.to_thread(ffmpeg.http_options_of, settings.ffmpeg), min(settings.stall_after, 15.0)
                ),
            )
        except ffmpeg.ExtractionError as error:
            if cut_done is not None:
                cut_done()
            failure = None if local else await storage_failure(storage, state.source, deadline, error)
            if failure is None:
                raise
            raise ffmpeg.ExtractionError(
                failure.code, failure.message, command=error.command, stderr_tail=error.stderr_tail
            ) from None
        finally:
            if cut_done is not None:
                cut_done()  # FFmpeg has exited (a second call, after a failure, does nothing)
        result = await read_mp4_info(temporary) or await ffmpeg.probe(
            temporary, ffmpeg=settings.ffmpeg, ffprobe=settings.ffprobe, timeout=max(0.1, deadline - time.monotonic())
        )
        shortest, longest = expected_duration(state, info)
        if not result.has_video or not shortest <= result.duration <= longest:
            invalid = ffmpeg.ExtractionError(
                "output_invalid",
                f"FFmpeg produced a clip of {result.duration:.2f} s where {shortest:.2f}–{longest:.2f} s was "
                "expected" + ("" if result.has_video else ", with no video"),
                **({} if local else said),  # a local result's failure says what it always said
            )
            # FFmpeg ends an input whose connection broke as if it had ended (exit 0, a short clip): the store's
            # fault, retryable, not a result that would come out the same again.
            failure = None if local else await storage_failure(storage, state.source, deadline, invalid)
            if failure is not None:
                raise ffmpeg.ExtractionError(failure.code, failure.message, **said) from None
            raise invalid
        if local:
            # An fsync and a rename in a thread, not bounded: a timeout could not stop the thread (the file would be
            # published after the attempt failed), and a cut that finished in time is not lost to the margin.
            stored = await storage.put_output(temporary, name)
        else:
            uploading = True
            stored = await bounded(storage.put_output(temporary, name), deadline, f"uploading {name}")
            uploading = False
    except ffmpeg.ExtractionError as error:
        if error.code == "not_a_video":  # the temporary output could not be read: the cut is broken, not the source
            raise ffmpeg.ExtractionError(
                "output_invalid", error.message, command=error.command, stderr_tail=error.stderr_tail
            ) from None
        raise
    finally:
        if uploading and not local:  # a PUT cut short may still land: no object without its `completed`
            await discard_output(storage, name)
        await asyncio.to_thread(temporary.unlink, missing_ok=True)
    return Complete(
        run=state.run,
        attempt=state.attempt,
        bytes=stored.size,
        duration_seconds=round(result.duration, 3),
        elapsed_seconds=round(time.monotonic() - began, 3),
        output=name,
    )


async def _heartbeat(services: Services, state: ClipState, worker_id: str, production: asyncio.Task) -> None:
    """Renew the lease; stop the production (and its FFmpeg) as soon as the attempt is no longer current."""
    while True:
        await asyncio.sleep(services.settings.heartbeat_interval)
        try:
            current = await renew_lease(services.pool, state, worker_id)
        except Exception as error:  # a missed renewal is survivable; the reaper judges by lease age
            log.warning("lease renewal for %s/%s failed: %s", state.project_id, state.clip_id, error)
            continue
        if not current:
            log.info("attempt %s.%s of %s/%s was superseded (cancelled, timed out or retried); stopping it",
                     state.run, state.attempt, state.project_id, state.clip_id)
            production.cancel()
            return


async def extract(
    services: Services,
    project_id: str,
    clip_id: str,
    run: int,
    attempt: int,
    worker_id: str,
    shutting_down: asyncio.Event | None = None,
    *,
    cut_done: Callable[[], None] | None = None,
) -> str:
    """Run one attempt. Returns what happened: started work ends in an appended outcome or a discarded result.

    Cancelled while `shutting_down` is set (the worker got SIGTERM), the attempt is handed back without using it
    up; cancelled otherwise (arq's job_timeout), it has used its time and is recorded as timed out, so a job that
    keeps being cancelled ends after `max_attempts` like any other."""
    state, position = await clip_status.load_with_position(services.pool, project_id, clip_id)
    if (state.run, state.attempt) != (run, attempt) or state.started or state.status not in ("pending", "retrying"):
        return "stale"
    # A job is only ever queued once its attempt is due (the dispatcher admits it no earlier than `not_before`; the
    # fifo reactor defers it in arq), so it starts at once. FFmpeg starts while `started` (with the lease) commits:
    # the cut does not wait for the log's fsync. When the attempt cannot start (another job of it started first),
    # the cut is stopped and its temporary file removed; nothing is published before `started` is recorded.
    began = time.monotonic()
    allowed = attempt_deadline_seconds(state.end - state.start, state.mode, services.settings.attempt_timeout)
    reporter = ProgressReporter(services, state)  # the same attempt as the one `started` records
    production = asyncio.create_task(produce_clip(services, state, allowed, reporter.on_report, cut_done))
    try:
        started = await start_attempt(
            services.pool, project_id, clip_id, Start(run=run, attempt=attempt, worker_id=worker_id), services.context,
            known=(state, position),  # read just now: not read again (a state moved on meanwhile conflicts)
        )  # fmt: skip
    except BaseException as error:
        production.cancel()
        await asyncio.gather(production, return_exceptions=True)
        if isinstance(error, StaleAttempt):
            return "stale"
        raise
    state = started.state
    time_left = (state.deadline_at - utcnow()).total_seconds() if state.deadline_at else 0.0
    ends_at = time.monotonic() + time_left  # the attempt's deadline (`deadline` names the exception below)
    cancelled = False  # by the worker's shutdown or the queue: record the outcome quickly
    heartbeat = asyncio.create_task(_heartbeat(services, state, worker_id, production))
    try:
        command: Command = await production
    except asyncio.CancelledError:
        job = asyncio.current_task()
        if job is None or not job.cancelling():
            return "superseded"  # the heartbeat stopped it: its outcome is already recorded
        job.uncancel()
        if shutting_down is not None and shutting_down.is_set():  # a deploy: give the attempt back
            command = HandBack(run=run, attempt=attempt, elapsed_seconds=_since(began))
        else:
            log.warning("attempt %s.%s of %s/%s was cancelled by the queue (job timeout); timing it out", run,
                        attempt, project_id, clip_id)
            # arq's job timeout is the attempt's timeout + 120 s: the attempt is past its deadline
            command = TimeOut(
                run=run, attempt=attempt, detected_by="worker", reason="deadline", elapsed_seconds=_since(began)
            )
        cancelled = True
    except ffmpeg.Deadline as deadline:  # its deadline, or (Stalled) no progress for CLIPLOG_STALL_AFTER
        command = TimeOut(
            run=run,
            attempt=attempt,
            detected_by="worker",
            reason="stalled" if isinstance(deadline, ffmpeg.Stalled) else "deadline",
            elapsed_seconds=_since(began),
            command=deadline.command,
            stderr_tail=deadline.stderr_tail,
        )
    except ffmpeg.ExtractionError as error:
        command = Fail(
            run=run,
            attempt=attempt,
            code=error.code,
            message=error.message,
            retryable=is_retryable(error.code),
            elapsed_seconds=_since(began),
            command=error.command,
            stderr_tail=error.stderr_tail,
        )
    except Exception as error:  # a bug or an OS error: record it instead of leaving the attempt running
        log.exception("attempt %s.%s of %s/%s crashed", run, attempt, project_id, clip_id)
        command = Fail(
            run=run,
            attempt=attempt,
            code="internal",
            message=f"The worker failed unexpectedly: {type(error).__name__}: {error}",
            retryable=True,
            elapsed_seconds=_since(began),
        )
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        await reporter.close()
    patience = 5.0 if cancelled else record_patience(ends_at, time.monotonic(), services.settings.lease_timeout)
    try:
        recording = record(
            services, project_id, clip_id, command, give_up_after=patience, known=(state, started.position)
        )
        await _to_its_end(recording)
    except StaleAttempt:
        if isinstance(command, Complete):
            # A retried append whose first COMMIT did land looks stale too: keep the file the log points at.
            current = await clip_status.load(services.pool, project_id, clip_id)
            if current.status == "completed" and current.output == command.output:
                return "complete"
            await discard_output(services.store, command.output)
        log.info("attempt %s.%s of %s/%s ended meanwhile (cancelled, timed out or retried); its %s was discarded",
                 run, attempt, project_id, clip_id, type(command).__name__)
        return "discarded"
    return type(command).__name__.lower()


def record_patience(deadline: float, now: float, lease_timeout: float) -> float:
    """How long the worker keeps retrying the append of its outcome: until the attempt's deadline plus a lease
    (by then the reaper has timed it out, so the result would be stale), counted from its deadline, not from
    when the cut ended. So a published output's `completed` lands within CLIPLOG_ATTEMPT_TIMEOUT +
    CLIPLOG_LEASE_TIMEOUT of the attempt's start, which CLIPLOG_ORPHAN_GRACE must exceed (settings check it)."""
    return max(0.0, deadline - now) + lease_timeout


async def _to_its_end(recording: Awaitable[None]) -> None:
    """Await the outcome's append to its end even when the job is cancelled meanwhile (a shutdown past its grace,
    arq's job timeout): the attempt is over, and an outcome lost here would be timed out by the reaper, its attempt
    used up (a finished clip's file discarded). The append's own patience bounds the wait; then the cancellation
    goes on."""
    task = asyncio.ensure_future(recording)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])  # a second cancellation stops this wait, not the append
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the job reports
        raise


async def record(
    services: Services, project_id: str, clip_id: str, command: Command, give_up_after: float,
    known: tuple[ClipState, int] | None = None,
) -> None:  # fmt: skip
    """Append the attempt's outcome, retrying while PostgreSQL is unreachable. Past `give_up_after` seconds the
    reaper will have timed the attempt out anyway, so the result would be stale. `known`: the clip's state and
    position as the attempt's `started` left them, decided on without reading them again (`handle`: if the clip
    moved on meanwhile, cancelled or timed out, the append conflicts and the state is read)."""
    give_up_at = time.monotonic() + give_up_after
    while True:
        try:
            await handle(services.pool, project_id, clip_id, command, services.context, known=known)
            return
        except DEPENDENCY_ERRORS as error:
            if time.monotonic() > give_up_at:
                raise StaleAttempt(f"could not record the outcome before giving up: {error}") from error
            log.warning("recording %s for %s/%s failed (%s); retrying", type(command).__name__, project_id, clip_id, error)
            await asyncio.sleep(1.0)


def _since(began: float) -> float:
    return round(time.monotonic() - began, 3)
