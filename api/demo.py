"""`cliplog dev --demo`: a generated source video and sample clips that show every state.

- brilliant-pass, accurate-goal: extracted (a stream copy and a frame-accurate re-encode);
- broken-source, past-the-end: "Extraction failed" for good (not a video; a range past the end), with a retry button;
- slow-motion: its source (a copy of the match) makes the demo's FFmpeg wrapper hang on the first attempt, so the
  clip shows "Extracting…", times out (CLIPLOG_ATTEMPT_TIMEOUT, 15 s in the demo unless set), "Retrying: attempt 2
  of 3 in Xs", then "Extracted";
- changed-my-mind: cancelled as soon as it is added: "Cancelled", with a retry button.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Mapping

from domain.clip import Cancel, Register
from runtime.settings import Settings
from usecases.clips import handle, register
from usecases.services import Services

PROJECT = "demo"
CLIPS = [
    ("brilliant-pass", Register(source="demo/match.mp4", start=12.0, end=22.0, name="Brilliant Pass Run Cross")),
    ("accurate-goal", Register(source="demo/match.mp4", start=31.5, end=34.0, mode="accurate", name="Goal, frame-accurate")),
    ("broken-source", Register(source="demo/broken.mp4", start=0.0, end=5.0, name="From a corrupt upload")),
    ("past-the-end", Register(source="demo/match.mp4", start=100.0, end=110.0, name="Past the end of the match")),
    ("slow-motion", Register(source="demo/slow-motion.mp4", start=40.0, end=46.0, name="Slow-motion replay (hangs once)")),
    ("changed-my-mind", Register(source="demo/match.mp4", start=50.0, end=58.0, name="Cancelled by you")),
]
CANCELLED = "changed-my-mind"
HANGING_SOURCE = "demo/slow-motion.mp4"
DEMO_ATTEMPT_TIMEOUT = "15"


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
    slow = folder / "slow-motion.mp4"
    if not slow.exists():
        shutil.copyfile(match, folder / ".slow-motion.tmp.mp4")
        os.replace(folder / ".slow-motion.tmp.mp4", slow)
    broken = folder / "broken.mp4"
    if not broken.exists():
        broken.write_bytes(b"not a video, just bytes\n" * 512)


async def add_demo(services: Services, user: str) -> None:
    make_sources(services.settings)
    for clip_id, command in CLIPS:
        await register(services.pool, PROJECT, clip_id, command, services.context, user=user)
        if clip_id == CANCELLED:
            await handle(services.pool, PROJECT, clip_id, Cancel(), services.context)


def demo_environment(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """The environment `cliplog dev --demo` gives its processes: an FFmpeg wrapper (written into the data dir) that
    hangs on the first run touching HANGING_SOURCE and runs the real FFmpeg otherwise, and a short attempt timeout
    unless CLIPLOG_ATTEMPT_TIMEOUT is set, so the hang is timed out and retried within seconds."""
    marker = settings.data_dir / "demo-ffmpeg.hung-once"
    script = settings.data_dir / "demo-ffmpeg.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# Written by `cliplog dev --demo`: the first FFmpeg run on the demo's slow-motion source hangs (the worker\n"
        "# times it out and retries); every other run is the real FFmpeg. Delete the marker file to hang again.\n"
        f"case \"$*\" in\n"
        f"  *{HANGING_SOURCE}*)\n"
        f"    if [ ! -e {shlex.quote(str(marker))} ]; then : > {shlex.quote(str(marker))}; exec sleep 3600; fi ;;\n"
        "esac\n"
        f"exec {shlex.quote(settings.ffmpeg)} \"$@\"\n"
    )
    script.chmod(0o755)
    extra = {"CLIPLOG_FFMPEG": str(script)}
    if not env.get("CLIPLOG_ATTEMPT_TIMEOUT"):
        extra["CLIPLOG_ATTEMPT_TIMEOUT"] = DEMO_ATTEMPT_TIMEOUT
    return extra
