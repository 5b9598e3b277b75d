"""Helpers of the storage tests: an S3Storage on the test server's gate, sources made with FFmpeg (a long one by
stream-copying a short one many times over), and a worker in this process with a given storage."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

from storage.s3 import S3Config, S3Storage
from tests import worker_support
from tests.s3server import CREDENTIALS, S3Server
from tests.worker_support import outcomes
from usecases.services import Services


def s3_storage(server: S3Server, bucket: str, **config: object) -> S3Storage:
    values: dict[str, object] = {"bucket": bucket, "endpoint": server.endpoint, "path_style": True, "timeout": 5.0,
                                 "retry_seconds": 1.0}  # fmt: skip
    values.update(config)
    return S3Storage(S3Config(**values), credentials=dict(CREDENTIALS))  # type: ignore[arg-type]


def bucket_of(server: S3Server, sources: dict[str, Path]) -> str:
    """A new bucket holding `sources` under `sources/games/` (the key a clip names is `games/<name>`)."""
    name = f"src-{secrets.token_hex(4)}"
    server.create_bucket(name)
    for key, path in sources.items():
        server.put_object(name, f"sources/games/{key}", path)
    return name


def make_long_video(ffmpeg: str, target: Path, minutes: int = 60) -> Path:
    """A source of `minutes` minutes, quick to make: one minute of a small, low-bitrate test pattern with a tone
    (a keyframe a second), stream-copied `minutes` times into one MP4 (its moov box at the end, after the media
    data, as FFmpeg writes it without +faststart)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    piece = target.with_name(f".{target.stem}-piece.mp4")
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050",
         "-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-b:v", "250k",
         "-c:a", "aac", "-b:a", "32k", "-shortest", "-f", "mp4", str(piece)],
        check=True,
    )  # fmt: skip
    listing = target.with_name(f".{target.stem}-list.txt")
    listing.write_text("".join(f"file '{piece.name}'\n" for _ in range(minutes)))
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0",
         "-i", str(listing), "-c", "copy", "-f", "mp4", str(target)],
        check=True,
    )  # fmt: skip
    piece.unlink()
    listing.unlink()
    return target


def make_matroska(ffmpeg: str, source: Path, target: Path) -> Path:
    """`source` stream-copied into a Matroska file: a video the MP4 box reader cannot read (its first bytes, the
    EBML header, read as an MP4 box, run past the end), so FFmpeg probes it over the presigned URL."""
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source), "-c", "copy",
                    "-f", "matroska", str(target)], check=True)  # fmt: skip
    return target


async def register(services: Services, clip: str, **fields: object) -> None:
    """Register clip `clip` of project "p" on a source in the bucket (`games/match.mp4` unless `source=` says)."""
    await worker_support.register(services, clip, **{"source": "games/match.mp4", **fields})


async def first_outcome(services: Services, clip: str, timeout: float = 60) -> tuple[int, str, str | None]:
    import time

    deadline = time.monotonic() + timeout
    while not (found := await outcomes(services, clip)):
        assert time.monotonic() < deadline, f"no outcome of {clip} in {timeout} s"
        await asyncio.sleep(0.05)
    return found[0]
