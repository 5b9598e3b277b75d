"""Extraction with S3 storage, end to end in this process: a real worker (arq, the dispatcher) cuts clips of
sources in moto's S3 server (tests/s3server.py) with real FFmpeg reading presigned URLs, uploads the result and
records `completed`. The gate in front of the store counts what is read: a 10 s clip of a 1-hour source reads a
small fraction of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import imageio_ffmpeg
import msgspec
import pytest

from handlers import extraction, mp4
from runtime.bootstrap import open_storage
from runtime.settings import Settings, find_ffmpeg, load
from storage.s3 import S3Storage
from tests.e2e.system import make_video
from tests.s3.support import bucket_of, make_long_video, make_matroska, register, s3_storage
from tests.worker_support import outcomes, running_worker, settled
from tests.s3server import TEST_ENV

FFMPEG = find_ffmpeg(os.environ)
FFPROBE = shutil.which("ffprobe")
PIP_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()  # the fallback where there is none on PATH (a newer one, probing with -i)
DURATION_TOLERANCE = extraction.DURATION_TOLERANCE


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s3-sources")
    return {
        "match.mp4": make_video(FFMPEG, root / "match.mp4", seconds=12),
        "long.mp4": make_long_video(FFMPEG, root / "long.mp4", minutes=60),
    }


@pytest.fixture(scope="module")
def matroska(sources: dict[str, Path]) -> Path:
    """match.mp4 in a Matroska file (put in a bucket by the tests that read it)."""
    return make_matroska(FFMPEG, sources["match.mp4"], sources["match.mp4"].with_suffix(".mkv"))


@pytest.fixture
def bucket(s3_server, sources) -> str:  # noqa: ANN001
    return bucket_of(s3_server, sources)


@pytest.fixture
async def settings(make_database, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=await make_database(migrated=True), redis_url=redis_url, data_dir=tmp_path,
        media_root=tmp_path / "media", output_root=tmp_path / "clips", ffmpeg=FFMPEG, heartbeat_interval=0.5,
        lease_timeout=30.0, retry_base=0.1, retry_max=0.2, storage="s3", s3_bucket="unused",
    )  # fmt: skip


async def downloaded(storage: S3Storage, name: str, target: Path) -> Path:
    head = await storage.head_output(name)
    target.write_bytes(b"".join([chunk async for chunk in storage.read_output(name, 0, head.size)]))
    return target


@pytest.mark.parametrize(("mode", "start", "end"), [("copy", 2.0, 7.0), ("accurate", 2.5, 6.5)])
async def test_a_clip_of_a_source_in_s3_is_cut_uploaded_and_completed(
    settings, s3_server, s3_gate, bucket, tmp_path, mode, start, end
):
    storage = s3_storage(s3_server, bucket)
    async with running_worker(settings, storage) as services:
        await register(services, "c1", start=start, end=end, mode=mode)
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error
    assert state.output == "p/c1.r1a1.mp4"
    head = await storage.head_output(state.output)
    assert head.size == state.bytes
    info = mp4.read_info(await downloaded(storage, state.output, tmp_path / "clip.mp4"))
    assert info is not None and info.has_video
    # match.mp4 has a keyframe every second: a copy starts at the one at or before `start`
    expected = end - (int(start) if mode == "copy" else start)
    assert info.duration == pytest.approx(expected, abs=DURATION_TOLERANCE)
    assert state.duration_seconds == pytest.approx(info.duration, abs=0.001)
    # nothing left in the worker's cutting folder
    assert [p for p in extraction.cutting_root(settings).rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("mode", ["copy", "accurate"])
async def test_a_10_s_clip_of_a_1_hour_source_reads_a_small_fraction_of_it(
    settings, s3_server, s3_gate, bucket, sources, mode
):
    source_size = sources["long.mp4"].stat().st_size
    storage = s3_storage(s3_server, bucket)
    async with running_worker(settings, storage) as services:
        s3_gate.reset_counts()
        await register(services, "c1", source="games/long.mp4", start=1825.5, end=1835.5, mode=mode)
        state = await settled(services, "c1", timeout=90)
        read = s3_gate.sent
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error
    # a copy starts at the keyframe at 1825 s (one a second), an accurate cut at 1825.5 s
    assert state.duration_seconds == pytest.approx(10.5 if mode == "copy" else 10.0, abs=DURATION_TOLERANCE)
    print(f"\n{mode}: read {read} bytes from the store for a 10 s clip of a {source_size}-byte source "
          f"({read / source_size:.2%}); the clip has {state.bytes} bytes")  # fmt: skip
    # measured here: 3-4 % with FFmpeg 7.1+ (bounded range requests), 10-12 % with an older one (TCP read-ahead at
    # each seek); the moov box alone is 1.2 % and is read twice (the probe, FFmpeg)
    assert read < source_size / 5, (read, source_size)


async def test_the_probe_reads_only_box_headers_and_the_moov_box_once_per_etag(s3_server, s3_gate, bucket, sources):
    storage = s3_storage(s3_server, bucket)
    head = await storage.head_source("games/long.mp4")
    s3_gate.reset_counts()
    info = await extraction.remote_source_info(storage, head, None, Settings(database_url="x"), timeout=10)
    first = s3_gate.sent
    assert info == mp4.read_info(sources["long.mp4"])
    assert info.duration == pytest.approx(3600, abs=1)
    assert first < sources["long.mp4"].stat().st_size / 20
    s3_gate.reset_counts()
    assert await extraction.remote_source_info(storage, head, None, Settings(database_url="x"), timeout=10) == info
    assert s3_gate.sent == 0  # cached per (bucket, key, ETag)


async def test_a_missing_key_fails_source_missing_at_once_naming_bucket_and_key(settings, s3_server, s3_gate, bucket):
    storage = s3_storage(s3_server, bucket)
    async with running_worker(settings, storage) as services:
        await register(services, "c1", source="games/nothing-here.mp4")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "source_missing")]
    assert state.status == "failed" and f"s3://{bucket}/sources/games/nothing-here.mp4" in state.last_error.message


async def test_a_source_that_is_no_mp4_is_probed_by_ffprobe_over_its_url_and_cut(
    settings, s3_server, s3_gate, bucket, matroska, tmp_path
):
    """A source that is no MP4 has no boxes to read by range: the worker probes it with ffprobe (production with
    Debian's FFmpeg; the pip-shipped one has none and probes with `ffmpeg -i`, the tests above) reading the
    presigned URL, then cuts it; the clip's duration is the range asked for. ffprobe runs through a wrapper that
    records what it was given."""
    assert FFPROBE is not None, "no ffprobe on PATH: scripts/install-system-deps installs Debian's FFmpeg, which has it"
    calls = tmp_path / "ffprobe-calls"
    wrapper = tmp_path / "ffprobe"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec {FFPROBE} "$@"\n')
    wrapper.chmod(0o755)
    s3_server.put_bytes(bucket, "sources/games/match.mkv", matroska.read_bytes())
    storage = s3_storage(s3_server, bucket)
    settings = msgspec.structs.replace(settings, ffprobe=str(wrapper))
    async with running_worker(settings, storage) as services:
        await register(services, "c1", source="games/match.mkv", start=2.5, end=6.5, mode="accurate")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "completed", None)], state.last_error
    [call] = calls.read_text().splitlines()
    assert "/sources/games/match.mkv?" in call and "X-Amz-Signature=" in call, call
    info = mp4.read_info(await downloaded(storage, state.output, tmp_path / "clip.mp4"))
    assert info is not None and info.has_video
    assert info.duration == pytest.approx(4.0, abs=DURATION_TOLERANCE)


@pytest.mark.parametrize("ffmpeg", [pytest.param(FFMPEG, id="ffmpeg"), pytest.param(PIP_FFMPEG, id="pip-ffmpeg")])
async def test_a_source_that_is_no_video_fails_not_a_video_at_once_while_the_store_answers(
    settings, s3_server, s3_gate, bucket, matroska, ffmpeg
):
    """Sources that are no MP4 are probed by FFmpeg over the presigned URL. When it cannot read one and the store
    answers its HEAD, the attempt fails with the source's own code, `not_a_video`, not retried (as a local source's
    does): a text file, and a Matroska file cut short after its first bytes, of which FFmpeg says "End of file" on
    its input's line ("[in#0 @ ...] Error opening input: End of file" from 7 on), as of an input whose connection
    ended early."""
    s3_server.put_bytes(bucket, "sources/games/notes.mp4", b"no video in here\n" * 100)
    s3_server.put_bytes(bucket, "sources/games/cut-short.mkv", matroska.read_bytes()[:40])
    settings = msgspec.structs.replace(settings, ffmpeg=ffmpeg)
    async with running_worker(settings, s3_storage(s3_server, bucket)) as services:
        for clip, source in (("c1", "games/notes.mp4"), ("c2", "games/cut-short.mkv")):
            await register(services, clip, source=source)
        for clip, source in (("c1", "games/notes.mp4"), ("c2", "games/cut-short.mkv")):
            state = await settled(services, clip)
            assert await outcomes(services, clip) == [(1, "failed", "not_a_video")], state.last_error
            assert state.status == "failed" and state.last_error.message.startswith(f"{source} is not a video")
            assert "X-Amz" not in state.last_error.message + (state.last_error.stderr_tail or "")


async def test_a_missing_bucket_is_storage_denied_at_once_and_not_retried(settings, s3_server, s3_gate):
    storage = s3_storage(s3_server, "no-such-bucket-anywhere")
    async with running_worker(settings, storage) as services:
        await register(services, "c1")
        state = await settled(services, "c1")
        assert await outcomes(services, "c1") == [(1, "failed", "storage_denied")]
    assert "no-such-bucket-anywhere" in state.last_error.message and "games/match.mp4" in state.last_error.message


async def test_the_settings_wire_s3_storage_with_the_standard_aws_variables(s3_server, s3_gate, bucket, monkeypatch):
    for variable, value in TEST_ENV.items():
        monkeypatch.setenv(variable, value)
    settings = load({
        "CLIPLOG_STORAGE": "s3", "CLIPLOG_S3_ENDPOINT": s3_server.endpoint, "CLIPLOG_S3_BUCKET": bucket,
        "CLIPLOG_S3_PATH_STYLE": "true",
    })  # fmt: skip
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage) and storage.backend == "s3"
    await storage.ping()
    assert [o.key for o in await storage.list_sources(None, 10)] == ["games/long.mp4", "games/match.mp4"]
