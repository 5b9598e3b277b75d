"""Serving a finished clip as HTTP serves files: `Range` (206, 416), `HEAD`, validators (`ETag`, `Last-Modified`)
and conditional requests (`If-None-Match`, `If-Modified-Since`, `If-Range`), per RFC 9110 sections 13 and 14.

`serve` is independent of where the bytes live: it takes the file's metadata (`FileMeta`) and a function that reads
a byte range, so a proxy over object storage answers exactly as the local files do (`local_file` builds both for a
file on disk). `not_modified` is the same decision for any response with validators (the UI's static files use it).
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import re
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping

import msgspec
from litestar import Response
from litestar.datastructures import Headers
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import body

_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_CHUNK = 256 * 1024
_DIGITS = 18  # longer numbers are beyond any file: no need to parse them (Python refuses > 4300 digits anyway)

# A clip's file never changes once `completed` is recorded (a completed clip is terminal and a new attempt writes a
# new file), but it needs the caller's token: browsers may keep it, shared caches must not.
IMMUTABLE_PRIVATE = "private, max-age=31536000, immutable"

ReadRange = Callable[[int, int], AsyncIterator[bytes]]  # (start, length) -> the bytes


class FileMeta(msgspec.Struct, frozen=True):
    size: int
    modified: datetime  # timezone-aware; HTTP dates have whole seconds
    etag: str  # a strong validator, quoted: '"..."'


def local_file(path: Path) -> tuple[FileMeta, ReadRange]:
    """Metadata and a range reader of a regular file (the validator changes if the file is replaced)."""
    stat = path.stat()
    tag = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}".encode()).hexdigest()[:32]
    modified = datetime.fromtimestamp(int(stat.st_mtime), timezone.utc)

    async def read(start: int, length: int) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(path.open, "rb")  # file-system calls in a thread, off the event loop
        try:
            await asyncio.to_thread(handle.seek, start)
            remaining = length
            while remaining > 0:
                chunk = await asyncio.to_thread(handle.read, min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    return FileMeta(size=stat.st_size, modified=modified, etag=f'"{tag}"'), read


def _tags(header: str) -> list[str]:
    """Entity tags of an `If-None-Match` / `If-Match` list (`*` stays `*`)."""
    return [t.strip() for t in header.split(",") if t.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def not_modified(headers: Mapping[str, str], etag: str | None, modified: datetime | None) -> bool:
    """Whether a GET/HEAD with these request headers gets 304 (RFC 9110 13.2.2: `If-None-Match` takes precedence
    over `If-Modified-Since`, which is evaluated only without it)."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = _tags(if_none_match)
        return etag is not None and ("*" in tags or any(_weak_equal(t, etag) for t in tags))
    since = _date(headers.get("if-modified-since"))
    return since is not None and modified is not None and modified.replace(microsecond=0) <= since


def _range_applies(headers: Mapping[str, str], meta: FileMeta) -> bool:
    """`If-Range`: the range applies only if the representation is still the one the client has (strong match)."""
    if_range = headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return if_range == meta.etag  # a weak tag never matches here (RFC 9110 13.1.5)
    date = _date(if_range)
    return date is not None and date == meta.modified.replace(microsecond=0)


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= _DIGITS else 10**_DIGITS


def byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """The inclusive `(start, end)` a `Range` header asks for; None to ignore it (another unit, several ranges,
    malformed: the whole file is sent); False when it cannot be satisfied (416)."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # a suffix: the last N bytes
        length = _number(last)
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    start = _number(first)
    end = size - 1 if last == "" else min(_number(last), size - 1)
    if last != "" and _number(last) < start:
        return False  # last-pos before first-pos
    if start >= size:
        return False
    return start, end


class Streaming(msgspec.Struct, frozen=True):
    """What a GET that sends bytes answers: the status, the headers, and the byte range to read."""

    status: int
    headers: dict[str, str]
    start: int
    length: int


def answer(
    method: str,
    headers: Mapping[str, str],
    meta: FileMeta,
    *,
    media_type: str = "video/mp4",
    cache_control: str = IMMUTABLE_PRIVATE,
) -> Response | Streaming:
    """The answer decided from the metadata alone: a complete Response (304, 416, and any HEAD), or the bytes a
    GET must send (`Streaming`), read by the caller."""
    validators = {
        "ETag": meta.etag,
        "Last-Modified": format_datetime(meta.modified.astimezone(timezone.utc), usegmt=True),
        "Cache-Control": cache_control,
        "Accept-Ranges": "bytes",
    }
    if not_modified(headers, meta.etag, meta.modified):
        return Response(b"", status_code=304, headers=validators, media_type=media_type)
    status, start, length = 200, 0, meta.size
    range_header = headers.get("range")
    if range_header is not None and _range_applies(headers, meta):
        wanted = byte_range(range_header, meta.size)
        if wanted is False:
            detail = f"range {range_header[:100]!r} cannot be satisfied: the file has {meta.size} bytes"
            return Response(
                body(416, detail),
                status_code=416,
                media_type="application/json",
                headers={**validators, "Content-Range": f"bytes */{meta.size}"},
            )
        if wanted is not None:
            start, end = wanted  # type: ignore[misc]
            status, length = 206, end - start + 1
            validators["Content-Range"] = f"bytes {start}-{end}/{meta.size}"
    validators["Content-Length"] = str(length)
    if method == "HEAD":
        return Response(b"", status_code=status, media_type=media_type, headers=validators)
    return Streaming(status=status, headers=validators, start=start, length=length)


def serve(
    method: str,
    headers: Mapping[str, str],
    meta: FileMeta,
    read: ReadRange,
    *,
    media_type: str = "video/mp4",
    cache_control: str = IMMUTABLE_PRIVATE,
) -> Response:
    """The answer to a GET or HEAD of a file: 304, 206, 416 or 200 (HEAD: the same headers, no body, nothing read)."""
    decided = answer(method, headers, meta, media_type=media_type, cache_control=cache_control)
    if isinstance(decided, Response):
        return decided
    return Stream(
        read(decided.start, decided.length), status_code=decided.status, media_type=media_type, headers=decided.headers
    )


def answer_not_modified(app: ASGIApp) -> ASGIApp:
    """Middleware: a 200 answer to GET/HEAD whose `ETag` / `Last-Modified` match the request's `If-None-Match` /
    `If-Modified-Since` becomes a 304 without a body (Litestar's static files send validators but never 304)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await app(scope, receive, send)
            return
        request_headers = Headers.from_scope(scope)
        if "if-none-match" not in request_headers and "if-modified-since" not in request_headers:
            await app(scope, receive, send)
            return
        replaced = False

        async def wrapped(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = Headers.from_scope(message)  # type: ignore[arg-type]
                if not_modified(request_headers, headers.get("etag"), _date(headers.get("last-modified"))):
                    replaced = True
                    kept = [(k, v) for k, v in message["headers"] if k.lower() in _KEPT_ON_304]
                    await send({"type": "http.response.start", "status": 304, "headers": kept})
                    return
            if replaced and message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await app(scope, receive, wrapped)

    return middleware


def typed_head(app: ASGIApp) -> ASGIApp:
    """Middleware: Litestar's static files answer HEAD without the `Content-Type` their GET has; add it (guessed
    from the path as Litestar's GET does, with its `charset` for text)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and not any(
                k.lower() == b"content-type" for k, _ in message.get("headers", [])
            ):
                kind = mimetypes.guess_type(scope["path"])[0]
                if kind is not None:
                    kind += "; charset=utf-8" if kind.startswith("text/") else ""
                    message["headers"] = [*message.get("headers", []), (b"content-type", kind.encode())]
            await send(message)

        await app(scope, receive, wrapped)

    return middleware


_KEPT_ON_304 = frozenset({b"etag", b"last-modified", b"cache-control", b"vary", b"expires", b"content-location"})
