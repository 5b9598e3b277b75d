"""Storage faults are recovery paths like any other (issue 11): a worker in this process cuts clips of sources in
moto's S3 server (tests/s3server.py) while the gate in front of the store refuses or hangs mid-cut or mid-upload;
a key the worker's credentials may not read; a late result; the orphan sweep of the S3 output prefix."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from domain.clip import Complete, Register, Start, TimeOut
from handlers import reaper
from projections import clip_status
from runtime.bootstrap import open_services
from runtime.settings import Settings, find_ffmpeg
from storage.base import ObjectMissing
from storage.s3 import S3Config, S3Storage
from tests.e2e.system import make_video
from tests.s3.support import bucket_of, first_outcome, make_long_video, make_matroska, register, s3_storage
from tests.worker_support import outcomes, running_worker, settled
from tests.s3server import CREDENTIALS, DENIED_PREFIX
from usecases.clips import handle
from usecases.services import utcnow

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

FFMPEG = find_ffmpeg(os.environ)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s3-fault-sources")
    return {
        "match.mp4": make_video(FFMPEG, root / "match.mp4", seconds=12),
        "long.mp4": make_long_video(FFMPEG, root / "long.mp4", minutes=10),
        "match.mkv": make_matroska(FFMPEG, root / "match.mp4", root / "match.mkv"),
    }


@pytest.fixture
def bucket(s3_server, sources) -> str:  # noqa: ANN001
    return bucket_of(s3_server, sources)


@pytest.fixture
async def settings(make_database, redis_url: str, tmp_path: Path) -> Settings:
    # Retries 1-2 s apart: time for a test to see the first failure and bring the store back.
    return Settings(
        database_url=await make_database(migrated=True), redis_url=redis_url, data_dir=tmp_path,
        media_root=tmp_path / "media", output_root=tmp_path / "clips", ffmpeg=FFMPEG, heartbeat_interval=0.5,
        lease_timeout=30.0, retry_base=2.0, retry_max=2.0, stall_after=10.0, storage="s3", s3_bucket="unused",
    )  # fmt: skip


async def wait_for(condition, timeout: float = 60, what: str = "the condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        await asyncio.sleep(0.02)


async def test_the_store_lost_mid_cut_fails_storage_unavailable_then_the_retry_completes(
    settings, s3_server, s3_gate, bucket
):
    storage = s3_storage(s3_server, bucket)
    async with running_worker(settings, storage) as services:
        # an accurate cut of 20 s takes seconds: long enough to lose the store in the middle of it
        await register(services, "c1", source="games/long.mp4", start=300.5, end=320.5, mode="accurate")
        before = s3_gate.sent

        async def cutting() -> bool:
            state = await clip_status.load(services.pool, "p", "c1")
            return state.status == "running" and s3_gate.sent > before + 2_000_000  # FFmpeg is reading the clip

        await wait_for(cutting, what="the cut reading its source")
        s3_gate.refuse()
        assert await first_outcome(services, "c1") == (1, "failed", "storage_unavailable")
        state = await clip_status.load(services.pool, "p", "c1")
        assert state.status == "retrying" and f"s3://{bucket}/sources/games/long.mp4" in state.last_error.message
        assert "X-Amz" not in msgspec.json.encode(state.last_error).decode()  # no presigned URL in the log
        s3_gate.open()
        state = await settled(services, "c1", timeout=120)
        assert await outcomes(services, "c1") == [(1, "failed", "storage_unavailable"), (2, "completed", None)]
    assert state.output == "p/c1.r1a2.mp4"
    assert (await storage.head_output(state.output)).size == state.bytes
    with pytest.raises(ObjectMissing):
        await storage.head_output("p/c1.r1a1.mp4")


class RefuseMidUpload(S3Storage):
    """The store goes away once the first upload has sent `after` bytes of its body (the gate counts them)."""

    def __init__(self, config: S3Config, credentials: dict[str, str], gate, after: int) -> None:  # noqa: ANN001
        super().__init__(config, credentials=credentials)
        self.gate, self.after, self.uploads = gate, after, 0

    async def put_output(self, local_path: Path, name: str):  # noqa: ANN201
        self.uploads += 1
        if self.uploads == 1:
            threshold = self.gate.received + self.after
            self.gate.refuse_once_received(threshold)
        return await super().put_output(local_path, name)


async def test_the_store_lost_mid_upload_fails_storage_unavailable_leaves_no_object_then_completes(
    settings, s3_server, s3_gate, bucket
):
    base = s3_storage(s3_server, bucket)
    storage = RefuseMidUpload(base.config, dict(__import__("tests.s3server").s3server.CREDENTIALS), s3_gate, 50_000)
    async with running_worker(settings, storage) as services:
        await register(services, "c1", start=1.0, end=9.0, mode="accurate")
        assert await first_outcome(services, "c1") == (1, "failed", "storage_unavailable")
        assert s3_gate.state == "refuse"  # refused by the upload's body, not before
        state = await clip_status.load(services.pool, "p", "c1")
        assert "p/c1.r1a1.mp4" in state.last_error.message
        s3_gate.open()
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "storage_unavailable"), (2, "completed", None)]
    assert storage.uploads == 2
    with pytest.raises(ObjectMissing):  # nothing under the failed attempt's key
        await base.head_output("p/c1.r1a1.mp4")
    assert (await base.head_output("p/c1.r1a2.mp4")).size == state.bytes


class GoneWhileFFprobeReads(S3Storage):
    """The store goes away once the first ranged probe has read a source's first bytes: for a Matroska file that is
    the probe's only read (its EBML header, read as an MP4 box, runs past the end), so the next to read the source is
    FFmpeg probing it over the presigned URL. `back_for_the_head`: the store is back for the HEAD that judges FFmpeg's
    failure (it was gone only while FFmpeg read)."""

    def __init__(self, config: S3Config, credentials: dict[str, str], gate, back_for_the_head: bool) -> None:  # noqa: ANN001
        super().__init__(config, credentials=credentials)
        self.gate, self.back_for_the_head = gate, back_for_the_head
        self.reads = self.heads = 0

    async def read_source(self, key: str, start: int, length: int):  # noqa: ANN201 - as S3Storage's
        async for chunk in super().read_source(key, start, length):
            yield chunk
        self.reads += 1
        if self.reads == 1:
            self.gate.refuse()

    async def head_source(self, key: str):  # noqa: ANN201
        self.heads += 1
        if self.heads == 2 and self.back_for_the_head:  # the first is the attempt's own, before the probe
            self.gate.open()
        return await super().head_source(key)


@pytest.mark.parametrize("back_for_the_head", [False, True], ids=["gone", "back-for-the-head"])
async def test_the_store_lost_while_ffmpeg_probes_a_source_fails_storage_unavailable_then_the_retry_completes(
    settings, s3_server, s3_gate, bucket, back_for_the_head
):
    """FFmpeg's failure to probe a source over its URL is judged against the store as its failure to cut is: the
    store gone (its HEAD fails), or back by then but FFmpeg said it lost its connection (FFmpeg 5 often only as
    "http://...: Connection reset by peer"), is `storage_unavailable` and retried, not the source's `not_a_video`."""
    credentials = dict(CREDENTIALS)
    storage = GoneWhileFFprobeReads(s3_storage(s3_server, bucket).config, credentials, s3_gate, back_for_the_head)
    async with running_worker(settings, storage) as services:
        await register(services, "c1", source="games/match.mkv")
        assert await first_outcome(services, "c1") == (1, "failed", "storage_unavailable")
        assert storage.reads == 1 and storage.heads == 2  # gone after the ranged probe, judged by a HEAD
        state = await clip_status.load(services.pool, "p", "c1")
        assert state.status == "retrying" and f"s3://{bucket}/sources/games/match.mkv" in state.last_error.message
        assert s3_gate.state == ("open" if back_for_the_head else "refuse")
        s3_gate.open()
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "storage_unavailable"), (2, "completed", None)]
    assert (await storage.head_output(state.output)).size == state.bytes


async def test_a_store_that_hangs_cannot_hold_an_attempt_past_its_deadline(settings, s3_server, s3_gate, bucket):
    storage = s3_storage(s3_server, bucket, timeout=60.0)  # the client's own timeout is longer than the deadline
    settings = msgspec.structs.replace(settings, attempt_timeout=4.0, max_attempts=1)
    async with running_worker(settings, storage) as services:
        s3_gate.hang()
        began = time.monotonic()
        await register(services, "c1")
        state = await settled(services, "c1", timeout=30)
        took = time.monotonic() - began
        assert await outcomes(services, "c1") == [(1, "failed", "storage_unavailable")]
    assert took < 4.0 + 3.0, took  # the deadline (4 s) and the dispatch, not the client's 60 s
    assert "games/match.mp4" in state.last_error.message


async def test_a_key_without_access_is_storage_denied_at_once_and_not_retried(settings, s3_denying_server):
    server, bucket, credentials = s3_denying_server
    storage = S3Storage(S3Config(bucket=bucket, endpoint=server.endpoint, path_style=True, timeout=5.0,
                                 retry_seconds=1.0), credentials=credentials)  # fmt: skip
    async with running_worker(settings, storage) as services:
        await register(services, "c1", source=DENIED_PREFIX.removeprefix("sources/") + "match.mp4")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "storage_denied")]
    assert state.status == "failed"
    assert f"s3://{bucket}/{DENIED_PREFIX}match.mp4" in state.last_error.message and "denied" in state.last_error.message


class TimedOutWhileUploading(S3Storage):
    """Its first upload lands, and meanwhile the reaper times the attempt out (its lease was lost)."""

    services = None

    async def put_output(self, local_path: Path, name: str):  # noqa: ANN201
        stored = await super().put_output(local_path, name)
        if name.endswith(".r1a1.mp4"):
            timeout = TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease")
            await handle(self.services.pool, "p", "c1", timeout, self.services.context)
        return stored


async def test_a_late_results_object_is_deleted(settings, s3_server, s3_gate, bucket):
    base = s3_storage(s3_server, bucket)
    storage = TimedOutWhileUploading(base.config, credentials=dict(__import__("tests.s3server").s3server.CREDENTIALS))
    async with running_worker(settings, storage) as services:
        storage.services = services
        await register(services, "c1")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "timed_out", "reaper"), (2, "completed", None)]
    with pytest.raises(ObjectMissing):  # the late result of attempt 1 took its object with it
        await base.head_output("p/c1.r1a1.mp4")
    assert (await base.head_output(state.output)).key == "p/c1.r1a2.mp4"


async def test_the_orphan_sweep_removes_old_objects_no_completed_event_points_at(
    settings, s3_server, s3_gate, bucket, tmp_path, ids
):
    storage = s3_storage(s3_server, bucket)
    project = ids.project()
    settings = msgspec.structs.replace(settings, orphan_grace=3600.0)
    services = await open_services(settings, pool_size=2, storage=storage)
    try:
        def context():  # noqa: ANN202
            return settings.context(utcnow(), 0.5)

        await handle(services.pool, project, "done", Register(source="games/match.mp4", start=0.0, end=1.0), context)
        await handle(services.pool, project, "done", Start(run=1, attempt=1, worker_id="w"), context)
        await handle(services.pool, project, "done", Complete(run=1, attempt=1, bytes=3, duration_seconds=1.0,
                                                             elapsed_seconds=0.1, output=f"{project}/done.r1a1.mp4"),
                     context)  # fmt: skip
        for name in ("done.r1a1.mp4", "done.r2a1.mp4", "lost.r1a1.mp4", "notes.txt", ".tmp-cut.r1a1.x.mp4"):
            s3_server.put_bytes(bucket, f"clips/{project}/{name}", b"mp4")
        s3_server.put_bytes(bucket, "sources/games/done.r1a1.mp4", b"a source, not an output")

        async def keys() -> set[str]:
            return {o.key async for o in storage.list_outputs()}

        planted = await keys()
        # Not yet older than the grace: nothing goes.
        assert await reaper.remove_orphaned_outputs(services, now=utcnow() + timedelta(seconds=3000)) == 0
        assert await keys() == planted
        # Past the grace: the outputs no `completed` names go; the completed clip's object and names that are not
        # outputs stay, and nothing outside the output prefix is looked at.
        assert await reaper.remove_orphaned_outputs(services, now=utcnow() + timedelta(seconds=3700)) == 2
        assert await keys() == planted - {f"{project}/done.r2a1.mp4", f"{project}/lost.r1a1.mp4"}
        assert (await storage.head_source("games/done.r1a1.mp4")).size == len(b"a source, not an output")
    finally:
        await services.close()


def test_a_worker_process_configured_for_s3_by_its_environment_rides_out_a_refusing_store(
    cluster, s3_server, s3_gate, source_video
):
    """`cliplog worker` as deployed: CLIPLOG_STORAGE=s3 and the CLIPLOG_S3_* settings, credentials from the standard
    AWS variables (bootstrap wires obstore from them). The store refuses at first: `storage_unavailable`, retried
    after the backoff, completed once the store answers, with the clip's object under the output prefix."""
    from tests.s3server import TEST_ENV

    bucket = f"proc-{secrets.token_hex(4)}"
    s3_server.create_bucket(bucket)
    s3_server.put_object(bucket, "media/games/match.mp4", source_video)
    storage_env = {
        "CLIPLOG_STORAGE": "s3", "CLIPLOG_S3_ENDPOINT": s3_server.endpoint, "CLIPLOG_S3_BUCKET": bucket,
        "CLIPLOG_S3_PATH_STYLE": "1", "CLIPLOG_S3_SOURCE_PREFIX": "media/", "CLIPLOG_S3_OUTPUT_PREFIX": "out/",
        "CLIPLOG_S3_TIMEOUT": "3", "CLIPLOG_RETRY_BASE": "2", "CLIPLOG_RETRY_MAX": "2", **TEST_ENV,
    }  # fmt: skip
    api = cluster.serve()  # registers against its local media folder (the API side of S3 is another branch's)
    s3_gate.refuse()
    cluster.worker("s3-worker", concurrency=1, **storage_env)
    assert api.register("p1", clip_id="c1", source="games/match.mp4", start=2.0, end=4.0).status_code == 201
    first = api.wait_for("p1", ["c1"], until=lambda clip: clip["attempt"] >= 1 and clip["last_error"] is not None)
    assert first["c1"]["last_error"]["code"] == "storage_unavailable", first
    assert f"s3://{bucket}/media/games/match.mp4" in first["c1"]["last_error"]["message"]
    s3_gate.open()
    clip = api.wait_for("p1", ["c1"], timeout=60)["c1"]
    assert clip["status"] == "completed", clip
    assert [e["type"] for e in api.history("p1", "c1") if e["type"] != "extraction.requested"] == [
        "extraction.started", "extraction.failed", "extraction.started", "extraction.completed",
    ]  # fmt: skip
    storage = s3_storage(s3_server, bucket, output_prefix="out/")
    head = asyncio.run(storage.head_output("p1/c1.r1a2.mp4"))
    assert head.size == clip["bytes"]
    cluster.check_log()
