"""A completed clip with a real output file, made through the domain (no worker): for tests of file serving."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from domain.clip import Complete, Register, Start
from runtime.settings import Settings
from usecases.clips import handle, register, start_attempt
from usecases.services import utcnow


async def completed_clip(
    pool: asyncpg.Pool, output_root: Path, user: str, project: str, clip: str, content: bytes
) -> str:
    """Register `clip` in `user`'s `project`, start and complete it with `content` as its file; its file URL."""
    context = lambda: Settings(database_url="unused").context(utcnow())  # noqa: E731
    await register(pool, project, clip, Register(source="a.mp4", start=0.0, end=1.0), context, user=user)
    await start_attempt(pool, project, clip, Start(run=1, attempt=1, worker_id="test"), context)
    output = f"{project}/{clip}-1-1.mp4"
    path = output_root / output
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    done = Complete(run=1, attempt=1, bytes=len(content), duration_seconds=1.0, elapsed_seconds=0.1, output=output)
    await handle(pool, project, clip, done, context)
    return f"/api/clips/projects/{project}/clips/{clip}/file"
