"""The API's side of the storage backend (`storage/`, `CLIPLOG_STORAGE`): checking a new clip's source, serving a
finished clip from object storage (a redirect to a presigned URL, or the bytes through the API), listing sources,
and health's storage check.

Every storage call made while a request waits is bounded in time, and every failure becomes an answer with a
detail (400, 404 or 503, never a 500): a `StorageError`'s message names the bucket (or folder) and the key and
never a presigned URL or a credential, and a presigned URL is only ever sent to the caller (in `Location`, or in
`GET .../file-link`), never logged.

Registration with the store unavailable answers 503 (with `Retry-After`) and appends nothing, rather than
accepting a clip whose source nobody could check: the client retries, as it does for PostgreSQL or Redis.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any, AsyncIterator, Awaitable, Mapping, TypeVar

import msgspec
from litestar import Response
from litestar.response import Stream

from api.files import FileMeta, Streaming, answer
from domain.errors import InvalidInput, NotFound, Unavailable
from runtime.media import resolve_inside
from runtime.settings import Settings
from storage.base import ObjectMissing, Storage, StorageDenied, StorageError, StoredObject
from storage.keys import source_key_problem
from usecases.services import Services

log = logging.getLogger("cliplog.api")

REQUEST_SECONDS = 10.0  # a storage call a request waits for (a HEAD, a page of a listing)
HEALTH_SECONDS = 2.0  # health's ping, like its PostgreSQL and Redis checks
MAX_LIST_CALLS = 10  # pages of the store's listing one GET /api/media reads at most (a page holds up to `limit`)
VIDEO_SUFFIXES = frozenset(  # what the media listings offer (by file name), local and s3 alike
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv".split()
)
NO_STORE = "private, no-store"  # a redirect to a URL that expires must not be kept

T = TypeVar("T")


def storage_of(services: Services) -> Storage:
    return services.store  # the wired backend (runtime/bootstrap.py), else the local roots


def where(settings: Settings) -> str:
    """Where sources are, in words for a detail."""
    if settings.storage == "s3":
        return f"under {settings.s3_source_prefix or '/'} in bucket {settings.s3_bucket}"
    return "in the media folder"


def not_a_source(settings: Settings, source: str, why: str | None = None) -> InvalidInput:
    kind = "an object" if settings.storage == "s3" else "a video file"
    detail = f"source {source[:200]!r} is not {kind} {where(settings)}" + (f": {why}" if why else "")
    return InvalidInput(detail, field="source")


async def bounded(call: Awaitable[T], seconds: float, what: str) -> T:
    """`call`, or StorageUnavailable-like 503 after `seconds` (a hung store must not hold a request)."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise Unavailable(f"object storage did not answer within {seconds:g} s ({what}); try again shortly") from None


def unavailable(error: StorageError, what: str) -> Unavailable:
    log.warning("storage unavailable while %s: %s", what, error.message)
    return Unavailable(f"object storage is unavailable ({what}): {error.message}; try again shortly", code=error.code)


# registration ----------------------------------------------------------------------------------------------------


async def check_source(services: Services, source: str) -> None:
    """400 unless `source` names a readable source: the same key rules for both backends (storage/keys.py), then a
    regular file inside the media root (local) or an object under the source prefix (s3, a HEAD)."""
    settings = services.settings
    problem = source_key_problem(source)
    if problem is not None:
        raise not_a_source(settings, source, problem)
    if settings.storage != "s3":
        if await asyncio.to_thread(resolve_inside, settings.media_root, source) is None:
            raise not_a_source(settings, source)
        return
    try:
        await bounded(storage_of(services).head_source(source), REQUEST_SECONDS, f"checking source {source!r}")
    except ObjectMissing:
        raise not_a_source(settings, source) from None
    except StorageDenied as error:
        detail = f"source {source[:200]!r} {where(settings)} cannot be read by cliplog: {error.message}"
        raise InvalidInput(detail, field="source") from None
    except StorageError as error:
        raise unavailable(error, f"checking source {source!r}") from None


# files -----------------------------------------------------------------------------------------------------------


class FileLink(msgspec.Struct, omit_defaults=True):
    """`GET .../clips/{clip_id}/file-link`: where a browser can fetch the clip itself."""

    url: str  # a presigned URL (direct) or the API's file route (needs the token)
    direct: bool  # true: `url` needs no token (the bucket serves it) and expires at `expires_at`
    expires_at: datetime | None = None


def redirect(url: str) -> Response:
    """307 to a presigned URL: the method and `Range` go with it; nothing may keep it (it expires)."""
    return Response(b"", status_code=307, headers={"Location": url, "Cache-Control": NO_STORE}, media_type="video/mp4")


def meta_of(stored: StoredObject) -> FileMeta:
    return FileMeta(size=stored.size, modified=stored.modified.astimezone(timezone.utc), etag=stored.etag)


async def presigned(services: Services, name: str) -> tuple[str, datetime]:
    seconds = services.settings.s3_url_expires
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    try:
        url = await bounded(storage_of(services).output_url(name, seconds), REQUEST_SECONDS, "signing a clip's URL")
    except StorageError as error:
        raise unavailable(error, "signing a clip's URL") from None
    return url, expires_at


class BodyBroken(Exception):
    """The store failed after the status was sent: the connection is broken off (the client sees a body shorter
    than its Content-Length, never a wrong one)."""


async def _first_and_rest(chunks: AsyncIterator[bytes], first: bytes | None, name: str) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
    try:
        async for chunk in chunks:
            yield chunk
    except StorageError as error:
        log.warning("storage failed while sending clip %s: %s", name, error.message)
        raise BodyBroken(error.message) from None


class _EndsWithoutTraceback:
    """An ASGI response that, when its body breaks (BodyBroken), returns without completing it: the server then
    closes the connection, with one line in its log rather than a traceback for a fault already logged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        except* BodyBroken:
            pass


class ProxiedStream(Stream):
    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _EndsWithoutTraceback(super().to_asgi_response(*args, **kwargs))


async def proxy(services: Services, method: str, headers: Mapping[str, str], name: str, clip_id: str) -> Response:
    """The clip's bytes through the API: what the local file route answers (Range, validators, conditionals), from
    the store's metadata and ranged reads. The first bytes are read before the status is sent, so a store that
    fails at once is a 503, not a broken 200."""
    storage = storage_of(services)
    try:
        stored = await bounded(storage.head_output(name), REQUEST_SECONDS, f"looking up clip {clip_id!r}")
    except ObjectMissing:
        raise NotFound(f"the file of clip {clip_id!r} is missing from the bucket") from None
    except StorageError as error:
        raise unavailable(error, f"looking up clip {clip_id!r}") from None
    decided = answer(method, headers, meta_of(stored))
    if not isinstance(decided, Streaming):
        return decided
    chunks = storage.read_output(name, decided.start, decided.length).__aiter__()
    first: bytes | None = None
    if decided.length > 0:
        try:
            first = await bounded(chunks.__anext__(), REQUEST_SECONDS, f"reading clip {clip_id!r}")
        except StopAsyncIteration:
            first = None
        except ObjectMissing:
            raise NotFound(f"the file of clip {clip_id!r} is missing from the bucket") from None
        except StorageError as error:
            raise unavailable(error, f"reading clip {clip_id!r}") from None
    return ProxiedStream(
        _first_and_rest(chunks, first, name), status_code=decided.status, media_type="video/mp4",
        headers=decided.headers,
    )


async def serve_stored(services: Services, method: str, headers: Mapping[str, str], name: str, clip_id: str) -> Response:
    """`GET`/`HEAD .../file` with s3 storage: a redirect (CLIPLOG_S3_SERVE=redirect) or the proxy."""
    if services.settings.s3_serve == "proxy":
        return await proxy(services, method, headers, name, clip_id)
    url, _ = await presigned(services, name)
    return redirect(url)


# sources ---------------------------------------------------------------------------------------------------------


def is_listed(key: str) -> bool:
    """A video (by suffix), not hidden (no segment starts with '.'), and a key registration accepts."""
    path = PurePosixPath(key)
    return (
        path.suffix.lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in path.parts)
        and source_key_problem(key) is None
    )


class Page(msgspec.Struct, frozen=True):
    found: list[StoredObject]
    next_after: str | None  # where the next page starts (None: nothing after)


async def list_videos(storage: Storage, after: str | None, limit: int) -> Page:
    """Up to `limit` videos after `after` in key order, from at most MAX_LIST_CALLS pages of the store's listing."""
    found: list[StoredObject] = []
    cursor = after
    for _ in range(MAX_LIST_CALLS):
        page = await storage.list_sources(cursor, limit + 1)
        for item in page:
            if is_listed(item.key):
                found.append(item)
                if len(found) > limit:
                    return Page(found[:limit], found[limit - 1].key)
        if len(page) < limit + 1:
            return Page(found, None)
        cursor = page[-1].key
    return Page(found, cursor)  # the listing goes on: the client continues from the last key looked at


async def media_page(services: Services, after: str | None, limit: int) -> Page:
    try:
        return await bounded(list_videos(storage_of(services), after, limit), REQUEST_SECONDS, "listing sources")
    except StorageError as error:
        raise unavailable(error, "listing sources") from None
    except ValueError:  # obstore refuses an offset that is no object path (`a//b`, `x/../y`, a control character)
        raise InvalidInput(f"after={after!r} is not a key to list from", field="after") from None


# health ----------------------------------------------------------------------------------------------------------


class StorageCheck(msgspec.Struct, omit_defaults=True):
    backend: str
    ok: bool
    detail: str | None = None


async def storage_check(services: Services) -> StorageCheck:
    """Whether the store answers (a bounded ping: a hung store answers `ok: false` after HEALTH_SECONDS)."""
    storage = storage_of(services)
    try:
        await asyncio.wait_for(storage.ping(), HEALTH_SECONDS)
        return StorageCheck(backend=storage.backend, ok=True)
    except TimeoutError:
        return StorageCheck(backend=storage.backend, ok=False, detail=f"no answer within {HEALTH_SECONDS:g} s")
    except StorageError as error:
        return StorageCheck(backend=storage.backend, ok=False, detail=error.message[:200])
    except Exception as error:  # noqa: BLE001 - health reports, never fails; the type only (no URL can leak)
        return StorageCheck(backend=storage.backend, ok=False, detail=f"unexpected {type(error).__name__}")
