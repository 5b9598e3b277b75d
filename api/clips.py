"""Clip routes: register, list, get, retry, cancel, history, story, export, file; and the project's bulk routes (retry-failed,
cancel-all)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody

from api.auth import check_id, require_project
from api.files import local_file, serve
from api.stored import NO_STORE, FileLink, check_source, presigned, serve_stored
from api.openapi import ClipId, ProjectId, errors, get_or_head
from api.views import (
    BulkResult, ClipView, EventView, RegisterClip, SkippedClip, StatusFilter, StoryStep, clip_view, story_step,
)  # fmt: skip
from domain.clip import CANCELLABLE, Cancel, ClipState, Command, Register, Retry
from domain.errors import Conflict, InvalidInput, NotFound
from eventlog import export, pages, progress, store
from projections import clip_status, queue
from projections.replay import replay
from api.deps import ServicesDep, UserDep
from runtime.media import resolve_inside
from usecases.clips import handle, handle_each, register, register_once
from usecases.services import Services, utcnow

MAX_NAME = 200
MAX_SOURCE = 1024
MAX_IDEMPOTENCY_KEY = 255

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Without clip_id: a repeated POST with this key returns the same clip (1-255 printable ASCII)",
    ),
]


async def _registered(services: Services, project_id: str, clip_id: str, user: str) -> tuple[ClipState, int]:
    """The caller's clip and the position of its last event; 404 for anything the caller cannot see."""
    await require_project(services.pool, project_id, user)
    check_id(clip_id, "clip_id")
    row = await services.pool.fetchrow(clip_status.READ_ROW, project_id, clip_id)
    if row is None:
        raise NotFound(f"clip {clip_id!r} not found in project {project_id!r}")
    return clip_status.state_from_json(row["state"]), row["position"]


async def live_views(services: Services, project_id: str, clips: list[tuple[ClipState, int]]) -> list[ClipView]:
    """The views of a project's clips, with what is not in the log: running clips' progress, pending clips' place
    in the queue and ETA."""
    running = [(s.clip_id, s.run, s.attempt) for s, _ in clips if s.status == "running"]
    progress_of = await progress.read(services.pool, project_id, running)
    waiting = await queue.estimate(
        services.pool, project_id, [s.clip_id for s, _ in clips if s.status == "pending"],
        fair=services.settings.dispatch == "fair",
    )
    now = utcnow()
    return [
        clip_view(
            state,
            position,
            now,
            services.settings,
            progress=progress_of.get(state.clip_id),
            queue_position=waiting.positions.get(state.clip_id),
            queue_eta_seconds=waiting.eta_seconds(state.clip_id),
        )
        for state, position in clips
    ]


async def _persons_command(services: Services, project_id: str, clip_id: str, user: str, command: Command) -> Response[ClipView]:
    """A person's command on one clip: 202 with the clip when it appended, 200 with it when there was nothing to do."""
    await _registered(services, project_id, clip_id, user)
    handled = await handle(services.pool, project_id, clip_id, command, services.context)
    view = clip_view(handled.state, handled.position, utcnow(), services.settings)
    return Response(view, status_code=202 if handled.appended else 200)


class ClipsController(Controller):
    path = "/api/clips/projects/{project_id:str}/clips"
    tags = ["clips"]

    @post(
        "/",
        summary="Register a clip and request its extraction",
        status_code=201,
        responses={
            200: ResponseSpec(ClipView, description="already registered with the same fields (or the same "
                              "Idempotency-Key): nothing appended"),
            **errors(400, 401, 404, 409, 413),
        },
    )
    async def register(
        self,
        project_id: ProjectId,
        data: JSONBody[RegisterClip],
        user: UserDep,
        services: ServicesDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ClipView]:
        check_id(project_id, "project_id")
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isascii() and idempotency_key.isprintable()
        ):
            raise InvalidInput(
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters", field="Idempotency-Key"
            )
        clip_id = check_id(data.clip_id, "clip_id") if data.clip_id is not None else secrets.token_urlsafe(9)
        if not data.source or len(data.source) > MAX_SOURCE or "\x00" in data.source:
            raise InvalidInput("source must be a path relative to the media folder", field="source")
        if data.name is not None and (len(data.name) > MAX_NAME or "\x00" in data.name):
            raise InvalidInput(f"name must be at most {MAX_NAME} characters, without NUL", field="name")
        await check_source(services, data.source)  # 400 with why (and 503 when the store does not answer)
        command = Register(
            source=data.source, start=data.start, end=data.end, mode=data.mode, name=data.name, priority=data.priority
        )
        if data.clip_id is None and idempotency_key is not None:
            fingerprint = hashlib.sha256(msgspec.json.encode(data)).hexdigest()
            handled = await register_once(
                services.pool, project_id, idempotency_key, fingerprint, clip_id, command, services.context, user=user
            )
        else:
            handled = await register(services.pool, project_id, clip_id, command, services.context, user=user)
        view = clip_view(handled.state, handled.position, utcnow(), services.settings)
        return Response(view, status_code=201 if handled.appended else 200)

    @get_or_head("/", summary="List a project's clips (never enqueues anything)", responses=errors(401, 404))
    async def list_clips(self, project_id: ProjectId, user: UserDep, services: ServicesDep) -> list[ClipView]:
        await require_project(services.pool, project_id, user)
        return await live_views(services, project_id, await clip_status.list_project(services.pool, project_id))

    @get_or_head("/{clip_id:str}", summary="One clip", responses=errors(401, 404))
    async def get_clip(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> ClipView:
        state, position = await _registered(services, project_id, clip_id, user)
        return (await live_views(services, project_id, [(state, position)]))[0]

    @post(
        "/{clip_id:str}/retry-extraction",
        summary="Start a new run with a fresh attempt budget",
        status_code=202,
        responses={
            200: ResponseSpec(ClipView, description="that run's first attempt is still pending: nothing appended"),
            **errors(401, 404, 409),
        },
    )
    async def retry(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> Response[ClipView]:
        return await _persons_command(services, project_id, clip_id, user, Retry())

    @post(
        "/{clip_id:str}/cancel",
        summary="Cancel a pending, retrying or running clip",
        status_code=202,
        responses={200: ResponseSpec(ClipView, description="already cancelled: nothing appended"), **errors(401, 404, 409)},
    )
    async def cancel(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> Response[ClipView]:
        return await _persons_command(services, project_id, clip_id, user, Cancel())

    @get_or_head("/{clip_id:str}/events", summary="The clip's whole history, oldest first", responses=errors(401, 404))
    async def history(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> list[EventView]:
        await _registered(services, project_id, clip_id, user)
        epoch = await store.epoch(services.pool)
        return await pages.read_stream(services.pool, epoch, project_id, clip_id)

    @get_or_head(
        "/{clip_id:str}/story",
        summary="After each of the clip's events: its state and why (domain/story.py)",
        responses=errors(401, 404),
    )
    async def story(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> list[StoryStep]:
        await _registered(services, project_id, clip_id, user)
        return [story_step(s) for s in replay(await store.read_stream(services.pool, project_id, clip_id))]

    @get_or_head(
        "/{clip_id:str}/export",
        summary="The clip's history as a file: `cliplog export --project P --clip C` (JSON lines, eventlog/export.py)",
        media_type=export.NDJSON,
        responses=errors(401, 404),
    )
    async def export_history(self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep) -> Response[bytes]:
        await _registered(services, project_id, clip_id, user)
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        async with services.pool.acquire() as conn:
            await export.write(conn, keep, export.Selection(project_id=project_id, clip_id=clip_id), now=utcnow())
        filename = f"{project_id}-{clip_id}.cliplog.jsonl"  # ids are [A-Za-z0-9_-]: nothing to quote
        return Response(
            b"".join(chunks), media_type=export.NDJSON, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    @get_or_head(
        "/{clip_id:str}/file",
        summary="The extracted clip (video/mp4; Range, conditional requests)",
        media_type="video/mp4",
        opt={"skip_compression": True},  # video does not compress, and Range counts the bytes of the file itself
        response_description="the whole file",
        responses={
            206: ResponseSpec(bytes, media_type="video/mp4", description="the requested range", generate_examples=False),
            304: ResponseSpec(None, description="the file matches `If-None-Match` / `If-Modified-Since`"),
            307: ResponseSpec(None, description="s3 storage with CLIPLOG_S3_SERVE=redirect (the default): `Location` is "
                               "a presigned URL of the clip, valid for CLIPLOG_S3_URL_EXPIRES seconds"),
            **errors(401, 404, 409, 416),
        },
    )
    async def file(
        self,
        request: Request,
        project_id: ProjectId,
        clip_id: ClipId,
        user: UserDep,
        services: ServicesDep,
    ) -> Response:
        state, _ = await _registered(services, project_id, clip_id, user)
        if state.status != "completed" or not state.output:
            raise Conflict(f"clip {clip_id!r} is {state.status}, not extracted yet")
        if services.settings.storage == "s3":
            return await serve_stored(services, request.method, request.headers, state.output, clip_id)
        path = await asyncio.to_thread(resolve_inside, services.settings.output_root, state.output)
        if path is None:
            raise NotFound(f"the file of clip {clip_id!r} is missing from the output folder")
        meta, read = await asyncio.to_thread(local_file, path)
        return serve(request.method, request.headers, meta, read)

    @get_or_head(
        "/{clip_id:str}/file-link",
        summary="Where a browser fetches the extracted clip: a presigned URL (s3 storage, redirect mode) or the file route",
        responses=errors(401, 404, 409),
    )
    async def file_link(
        self, project_id: ProjectId, clip_id: ClipId, user: UserDep, services: ServicesDep
    ) -> Response[FileLink]:
        state, _ = await _registered(services, project_id, clip_id, user)
        if state.status != "completed" or not state.output:
            raise Conflict(f"clip {clip_id!r} is {state.status}, not extracted yet")
        settings = services.settings
        if settings.storage == "s3" and settings.s3_serve == "redirect":
            url, expires_at = await presigned(services, state.output)
            link = FileLink(url=url, direct=True, expires_at=expires_at)
        else:
            link = FileLink(url=f"/api/clips/projects/{project_id}/clips/{clip_id}/file", direct=False)
        return Response(link, headers={"Cache-Control": NO_STORE})  # a URL that expires must not be kept


async def _each(
    services: Services, project_id: str, user: str, command: Command, data: StatusFilter | None, default: tuple[str, ...]
) -> BulkResult:
    await require_project(services.pool, project_id, user)
    statuses = frozenset(data.status if data is not None and data.status is not None else default)
    outcome = await handle_each(services.pool, project_id, command, statuses, services.context)
    return BulkResult(outcome.changed, [SkippedClip(s.clip_id, s.reason) for s in outcome.skipped])


class ProjectActionsController(Controller):
    """A person's command on many clips of a project at once. Each clip is changed in its own transaction."""

    path = "/api/clips/projects/{project_id:str}"
    tags = ["clips"]

    @post(
        "/retry-failed",
        status_code=200,
        summary="Retry every failed clip (or those of the given statuses)",
        responses=errors(400, 401, 404, 413),
    )
    async def retry_failed(
        self, project_id: ProjectId, user: UserDep, services: ServicesDep, data: JSONBody[StatusFilter | None] = None
    ) -> BulkResult:
        return await _each(services, project_id, user, Retry(), data, ("failed",))

    @post(
        "/cancel-all",
        status_code=200,
        summary="Cancel every pending, retrying and running clip (or those of the given statuses)",
        responses=errors(400, 401, 404, 413),
    )
    async def cancel_all(
        self, project_id: ProjectId, user: UserDep, services: ServicesDep, data: JSONBody[StatusFilter | None] = None
    ) -> BulkResult:
        return await _each(services, project_id, user, Cancel(), data, CANCELLABLE)
