"""The reaper's sweep of orphaned outputs (local backend) on the real PostgreSQL: files no `completed` event points at
(a cut whose attempt was handed back or timed out while its outcome was being recorded) go once older than
`CLIPLOG_ORPHAN_GRACE`; every completed clip's file, and every fresh file, stays."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from domain.clip import Complete, HandBack, Register, Start, TimeOut
from handlers import reaper
from runtime.bootstrap import open_services
from runtime.settings import ConfigError, Settings, load
from usecases.clips import handle
from usecases.services import Services, utcnow

GRACE = 3600.0


@pytest.fixture
async def services(database_url, redis_url, tmp_path: Path):  # noqa: ANN201
    settings = Settings(
        database_url=database_url, redis_url=redis_url, data_dir=tmp_path, media_root=tmp_path / "media",
        output_root=tmp_path / "clips", orphan_grace=GRACE, reaper_interval=0.05,
    )  # fmt: skip
    opened = await open_services(settings, pool_size=4)
    try:
        yield opened
    finally:
        await opened.close()


def context():  # noqa: ANN201
    return Settings(database_url="x").context(utcnow(), 0.5)


async def started(services: Services, project: str, clip: str) -> None:
    await handle(services.pool, project, clip, Register(source="a.mp4", start=0.0, end=1.0), context)
    await handle(services.pool, project, clip, Start(run=1, attempt=1, worker_id="w"), context)


async def completed(services: Services, project: str, clip: str) -> str:
    await started(services, project, clip)
    output = f"{project}/{clip}.r1a1.mp4"
    await handle(services.pool, project, clip, Complete(run=1, attempt=1, bytes=3, duration_seconds=1.0,
                                                        elapsed_seconds=0.1, output=output), context)  # fmt: skip
    return output


def plant(services: Services, name: str, age: float) -> Path:
    path = services.settings.output_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"mp4")
    modified = time.time() - age
    os.utime(path, (modified, modified))
    return path


async def test_the_sweep_removes_old_orphans_and_keeps_fresh_ones_and_every_completed_clips_file(services, ids):
    project = ids.project()
    old, fresh = GRACE + 60, 5.0
    kept = [
        plant(services, await completed(services, project, "done-long-ago"), old),
        plant(services, await completed(services, project, "done-now"), fresh),
        plant(services, f"{project}/cut-a-moment-ago.r1a1.mp4", fresh),  # its `completed` may be on its way
        plant(services, f"{project}/.tmp-cutting.r1a1.0123.mp4", old),  # a temporary: not an output
        plant(services, f"{project}/someone's notes.mp4", old),  # not named like an output
    ]
    # A cut finished, then the attempt was handed back (a deploy) while its outcome was being recorded; another
    # finished after the reaper timed its attempt out; one belongs to no clip at all.
    await started(services, project, "handed-back")
    await handle(services.pool, project, "handed-back", HandBack(run=1, attempt=1), context)
    await started(services, project, "timed-out")
    timed_out = TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease")
    await handle(services.pool, project, "timed-out", timed_out, context)
    orphans = [
        plant(services, f"{project}/handed-back.r1a1.mp4", old),
        plant(services, f"{project}/timed-out.r1a1.mp4", old),
        plant(services, f"{project}/never-registered.r1a1.mp4", old),
        plant(services, f"{project}/done-long-ago.r2a1.mp4", old),  # a clip's other attempt: no event names it
    ]
    assert await reaper.remove_orphaned_outputs(services) == len(orphans)
    assert [path.exists() for path in orphans] == [False] * len(orphans)
    assert [path.exists() for path in kept] == [True] * len(kept)
    assert await reaper.remove_orphaned_outputs(services) == 0


async def test_an_orphan_that_cannot_be_removed_does_not_keep_the_others(services, ids, monkeypatch):
    from storage.base import StorageDenied
    from storage.local import LocalStorage

    project = ids.project()
    stuck, *others = [plant(services, f"{project}/{name}.r1a1.mp4", GRACE + 60) for name in ("a", "b", "c")]
    delete = LocalStorage.delete_output

    async def refusing(self, name: str) -> None:  # noqa: ANN001 - an object lock, a DELETE refused for this key
        if name == f"{project}/a.r1a1.mp4":
            raise StorageDenied(f"deleting {name} is not allowed")
        await delete(self, name)

    monkeypatch.setattr(LocalStorage, "delete_output", refusing)
    assert await reaper.remove_orphaned_outputs(services) == 2
    assert stuck.exists() and not any(path.exists() for path in others)


async def test_the_reaper_runs_the_sweep(services, ids):
    orphan = plant(services, f"{ids.project()}/left-behind.r1a1.mp4", GRACE + 60)
    follower = asyncio.create_task(reaper.follow(services))
    try:
        async with asyncio.timeout(20):
            while orphan.exists():
                await asyncio.sleep(0.05)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def test_the_grace_must_outlast_an_attempt_recording_its_outcome():
    assert load({}).orphan_grace == 3600.0 and load({}).orphan_sweep_interval == 600.0
    with pytest.raises(ConfigError, match="CLIPLOG_ORPHAN_GRACE"):
        load({"CLIPLOG_ORPHAN_GRACE": "600"})  # not longer than CLIPLOG_ATTEMPT_TIMEOUT + CLIPLOG_LEASE_TIMEOUT
