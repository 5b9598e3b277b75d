"""What the web UI needs besides API.md's routes: the caller's projects, the settings the page works with, and
the videos under the media root (for the add-clip form). All need a token; errors are the usual JSON."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import msgspec
from litestar.params import Parameter

from api.deps import ServicesDep, UserDep
from api.openapi import errors, get_or_head
from api.stored import VIDEO_SUFFIXES, media_page
from runtime.media import resolve_inside

MAX_MEDIA_FILES = 2000


class ProjectView(msgspec.Struct):
    project_id: str
    clips: int
    statuses: dict[str, int]  # clips per status (pending, running, retrying, completed, failed, cancelled)
    slow: int  # pending or running for longer than CLIPLOG_SLOW_AFTER
    created_at: datetime
    updated_at: datetime | None  # the last change to one of its clips


class UiConfig(msgspec.Struct, omit_defaults=True):
    user: str
    poll_after: float
    slow_after: float
    max_clip_seconds: float
    max_attempts: int
    # (only sent when true) true when the file route redirects to the bucket (s3 storage, CLIPLOG_S3_SERVE=redirect): the player then
    # plays the presigned URL of GET .../file-link itself instead of fetching the bytes with the token
    file_links: bool = False


class MediaFile(msgspec.Struct):
    path: str  # relative to the media root, with "/" separators: what `source` takes
    bytes: int


class MediaList(msgspec.Struct, omit_defaults=True):
    files: list[MediaFile]
    truncated: bool  # more than MAX_MEDIA_FILES videos: the first ones in path order are listed
    # paged listings (s3 storage, or `after`/`limit` given): pass it as `after` for the next page; absent on the last
    next_after: str | None = None


@get_or_head(
    "/api/clips/projects", summary="The caller's projects, most recently active first", tags=["ui"], responses=errors(401)
)
async def list_projects(user: UserDep, services: ServicesDep) -> list[ProjectView]:
    rows = await services.pool.fetch(
        """
        SELECT p.project_id, p.created_at, count(c.clip_id) AS clips, max(c.updated_at) AS updated_at,
               count(c.clip_id) FILTER (
                   WHERE c.status IN ('pending', 'running') AND c.status_since < now() - make_interval(secs => $2)
               ) AS slow,
               array_remove(array_agg(c.status), NULL) AS statuses
        FROM projects p
        LEFT JOIN clips c ON c.project_id = p.project_id
        WHERE p.owner = $1
        GROUP BY p.project_id, p.created_at
        ORDER BY max(c.updated_at) DESC NULLS LAST, p.project_id
        """,
        user,
        services.settings.slow_after,
    )
    projects = []
    for row in rows:
        statuses: dict[str, int] = {}
        for status in row["statuses"]:
            statuses[status] = statuses.get(status, 0) + 1
        projects.append(
            ProjectView(
                project_id=row["project_id"],
                clips=row["clips"],
                statuses=statuses,
                slow=row["slow"],
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
        )
    return projects


@get_or_head("/api/config", summary="The settings the web UI works with", tags=["ui"], responses=errors(401))
async def ui_config(user: UserDep, services: ServicesDep) -> UiConfig:
    settings = services.settings
    return UiConfig(
        user=user,
        poll_after=settings.poll_after,
        slow_after=settings.slow_after,
        max_clip_seconds=settings.max_clip_seconds,
        max_attempts=settings.max_attempts,
        file_links=settings.storage == "s3" and settings.s3_serve == "redirect",
    )


def find_videos(root: Path, limit: int = MAX_MEDIA_FILES) -> MediaList:
    """Video files under `root` by name, skipping hidden files and folders (such as partial uploads)."""
    found: list[MediaFile] = []
    truncated = False
    if not root.is_dir():
        return MediaList(files=[], truncated=False)
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or Path(name).suffix.lower() not in VIDEO_SUFFIXES:
                continue
            relative = (Path(folder) / name).relative_to(root).as_posix()
            path = resolve_inside(root, relative)  # a regular file, not a link out of the root
            if path is None:
                continue
            if len(found) >= limit:
                truncated = True
                break
            found.append(MediaFile(path=relative, bytes=path.stat().st_size))
        if truncated:
            break
    found.sort(key=lambda f: f.path)
    return MediaList(files=found, truncated=truncated)


@get_or_head(
    "/api/media",
    summary="Video files under the media root, or the bucket's source prefix (sources for new clips)",
    tags=["ui"],
    responses=errors(400, 401),
)
async def list_media(
    user: UserDep,
    services: ServicesDep,
    after: Annotated[str | None, Parameter(description="list the sources after this one (a page's `next_after`)",
                                           max_length=1024)] = None,
    limit: Annotated[int | None, Parameter(ge=1, le=MAX_MEDIA_FILES, description="videos per page "
                                           f"(default {MAX_MEDIA_FILES})")] = None,
) -> MediaList:
    """Local storage without `after`/`limit`: every video, as it always was (the first MAX_MEDIA_FILES, `truncated`
    when there are more). Otherwise a page in key order: `next_after` is where the next one starts."""
    if services.settings.storage != "s3" and after is None and limit is None:
        return await asyncio.to_thread(find_videos, services.settings.media_root)
    page = await media_page(services, after, limit or MAX_MEDIA_FILES)
    return MediaList(
        files=[MediaFile(path=item.key, bytes=item.size) for item in page.found],
        truncated=page.next_after is not None,
        next_after=page.next_after,
    )


ROUTES = [list_projects, ui_config, list_media]
