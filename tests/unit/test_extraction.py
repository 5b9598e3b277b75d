"""Pure parts of the extraction job (handlers/extraction.py): how long an outcome's append is retried, and which
FFmpeg failures are the store's."""

from __future__ import annotations

import time

import pytest

from handlers import ffmpeg
from handlers.extraction import STORAGE_MARGIN, record_patience, storage_failure
from storage.base import ObjectMissing, StorageDenied, StorageUnavailable
from runtime.settings import load


@pytest.mark.parametrize("cut_took", [0.0, 1.0, 300.0, 599.0, 600.0, 700.0])
def test_an_outcome_lands_within_the_attempt_timeout_plus_a_lease_of_its_start_so_the_orphan_grace_covers_it(
    cut_took: float,
) -> None:
    """The sweep keeps outputs younger than CLIPLOG_ORPHAN_GRACE, which settings check is longer than
    CLIPLOG_ATTEMPT_TIMEOUT + CLIPLOG_LEASE_TIMEOUT: the worker must have given up recording by then, however early
    the cut ended (it used to retry for the whole time left at the start plus a lease *after* the cut: up to
    2 x timeout + lease after the start)."""
    settings = load({})
    start = 1000.0
    deadline = start + settings.attempt_timeout
    now = start + cut_took
    gives_up_at = now + record_patience(deadline, now, settings.lease_timeout)
    assert gives_up_at <= start + settings.attempt_timeout + settings.lease_timeout + (max(0.0, now - deadline))
    assert gives_up_at - start < settings.orphan_grace
    assert record_patience(deadline, now, settings.lease_timeout) >= settings.lease_timeout


class _Store:
    """A storage whose HEAD of the source answers `head` (an exception to raise, or None: the object is there)."""

    backend = "s3"

    def __init__(self, head: Exception | None = None) -> None:
        self.head = head
        self.heads = 0

    async def head_source(self, key: str) -> object:
        self.heads += 1
        if self.head is not None:
            raise self.head
        return object()

    def source_location(self, key: str) -> str:
        return f"s3://games/sources/{key}"


def _ffmpeg_failed(stderr: str) -> ffmpeg.ExtractionError:
    return ffmpeg.ExtractionError("ffmpeg_failed", "FFmpeg exited with status 1.", stderr_tail=stderr)


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        # the HTTP input's own words: the store's fault
        ("[https @ 0x5581] Will reconnect at 1234 in 0 second(s), error=Connection reset by peer.", StorageUnavailable),
        ("[tcp @ 0x5581] Connection to tcp://127.0.0.1:9000 failed: Connection refused", StorageUnavailable),
        ("[in#0/mov,mp4,m4a,3gp,3g2,mj2 @ 0x55] Error during demuxing: Input/output error", StorageUnavailable),
        ("[http @ 0x5581] HTTP error 503 Service Unavailable", StorageUnavailable),
        ("http://127.0.0.1:9000/games/sources/match.mp4?[redacted]: Connection reset by peer", StorageUnavailable),
        ("[in#0 @ 0x55] Error opening input: Server returned 403 Forbidden (access denied)", StorageDenied),
        # local or output-side failures: FFmpeg's own code stays
        ("[out#0/mp4 @ 0x55] Error writing trailer: Input/output error", None),
        ("[out#0/mp4 @ 0x55] Error muxing a packet\nError number -28 occurred", None),
        ("[aac @ 0x55] Input buffer exhausted before END element found\nEnd of file", None),
        ("[vost#0:0/libx264 @ 0x55] Error while opening encoder: Operation timed out", None),
        ("Conversion failed!", None),
    ],
)
async def test_only_the_http_inputs_errors_are_the_stores(stderr: str, kind: type | None) -> None:
    failure = await storage_failure(_Store(), "match.mp4", time.monotonic() + 60, _ffmpeg_failed(stderr))  # type: ignore[arg-type]
    assert type(failure) is kind if kind is not None else failure is None


async def test_a_genuine_ffmpeg_failure_near_the_deadline_keeps_its_code() -> None:
    """With less than STORAGE_MARGIN left the HEAD cannot be asked: no answer is no verdict (it used to be
    recorded as storage_unavailable)."""
    store = _Store()
    near = time.monotonic() + STORAGE_MARGIN / 2
    assert await storage_failure(store, "match.mp4", near, _ffmpeg_failed("Conversion failed!")) is None  # type: ignore[arg-type]
    assert store.heads == 0


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        # a lost connection: the store's fault, also while the source was probed
        ("[tcp @ 0x5581] Connection to tcp://127.0.0.1:9000 failed: Connection reset by peer", StorageUnavailable),
        ("[http @ 0x5581] HTTP error 503 Service Unavailable", StorageUnavailable),
        ("[in#0 @ 0x55] Error opening input: Connection reset by peer", StorageUnavailable),
        ("http://127.0.0.1:9000/games/sources/x.mkv?[redacted]: Connection reset by peer", StorageUnavailable),
        # the connection closed before the length the store announced (FFmpeg 9's -i, and ffprobe 5.1)
        ("[http @ 0x55] Stream ends prematurely at 40, should be 25400\n"
         "[in#0 @ 0x55] Error opening input: Input/output error", StorageUnavailable),
        ("[http @ 0x55] Stream ends prematurely at 40, should be 25400\n"
         "http://127.0.0.1:9000/games/sources/x.mkv?[redacted]: Input/output error", StorageUnavailable),
        # an input that ended early: a source cut short says the same (of a Matroska file's first 40 bytes, FFmpeg
        # 7 and later, and 6 and older)
        ("[in#0 @ 0x55] Error opening input: End of file\nError opening input files: End of file", None),
        ("http://127.0.0.1:9000/games/sources/x.mkv?[redacted]: End of file", None),
        ("[in#0 @ 0x55] Error opening input: Invalid data found when processing input", None),
    ],
)
async def test_a_probe_that_lost_its_connection_is_the_stores_one_that_ended_early_is_not(
    stderr: str, kind: type | None
) -> None:
    probe_failed = ffmpeg.ExtractionError("not_a_video", "x.mkv is not a video FFmpeg can read.", stderr_tail=stderr)
    failure = await storage_failure(_Store(), "x.mkv", time.monotonic() + 60, probe_failed)  # type: ignore[arg-type]
    assert type(failure) is kind if kind is not None else failure is None


@pytest.mark.parametrize("answer", [StorageDenied("denied"), ObjectMissing("gone"), StorageUnavailable("unreachable")])
async def test_a_definite_answer_of_the_store_overrides_ffmpegs_code(answer: Exception) -> None:
    failure = await storage_failure(
        _Store(answer), "match.mp4", time.monotonic() + 60, _ffmpeg_failed("Conversion failed!")  # type: ignore[arg-type]
    )
    assert failure is answer


async def test_bounded_turns_only_its_own_expiry_into_out_of_time():
    import asyncio

    from handlers.extraction import OutOfTime, bounded

    async def own_timeout() -> None:  # a call that fails with a timeout of its own (ETIMEDOUT from a socket, say)
        raise TimeoutError("connect timed out")

    with pytest.raises(TimeoutError) as raised:
        await bounded(own_timeout(), time.monotonic() + STORAGE_MARGIN + 60, "a HEAD")
    assert not isinstance(raised.value, OutOfTime)
    with pytest.raises(OutOfTime, match="did not answer a HEAD"):
        await bounded(asyncio.sleep(60), time.monotonic() + STORAGE_MARGIN + 0.05, "a HEAD")
