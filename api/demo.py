"""`cliplog dev --demo`: a generated source video and sample clips that show every state."""

from __future__ import annotations

import os
import subprocess

from api.auth import claim_project
from domain.clip import Register
from eventlog.clips import handle
from runtime.bootstrap import open_services
from runtime.settings import Settings

PROJECT = "demo"
CLIPS = [
    ("brilliant-pass", Register(source="demo/match.mp4", start=12.0, end=22.0, name="Brilliant Pass Run Cross")),
    ("accurate-goal", Register(source="demo/match.mp4", start=31.5, end=34.0, mode="accurate", name="Goal, frame-accurate")),
    ("broken-source", Register(source="demo/broken.mp4", start=0.0, end=5.0, name="From a corrupt upload")),
    ("past-the-end", Register(source="demo/match.mp4", start=100.0, end=110.0, name="Past the end of the match")),
]


def make_sources(settings: Settings) -> None:
    folder = settings.media_root / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    match = folder / "match.mp4"
    if not match.exists():
        temporary = folder / ".match.tmp.mp4"
        subprocess.run(
            [
                settings.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                "-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-g", "50",
                "-c:a", "aac", "-shortest", "-f", "mp4", str(temporary),
            ],
            check=True,
        )
        os.replace(temporary, match)
    broken = folder / "broken.mp4"
    if not broken.exists():
        broken.write_bytes(b"not a video, just bytes\n" * 512)


async def add_demo(settings: Settings, user: str) -> None:
    make_sources(settings)
    services = await open_services(settings, pool_size=2)
    try:
        for clip_id, command in CLIPS:
            await handle(
                services.pool,
                PROJECT,
                clip_id,
                command,
                services.context,
                after_append=lambda conn, _: claim_project(conn, PROJECT, user),
            )
    finally:
        await services.close()
