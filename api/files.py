"""Serving a finished clip with HTTP Range support (players seek with it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

from litestar import Response
from litestar.response import Stream

_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})$")
_CHUNK = 256 * 1024


def _chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        with path.open("rb") as handle:
            handle.seek(start)
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    return generate()


def ranged_file(path: Path, range_header: str | None, media_type: str = "video/mp4") -> Response:
    size = path.stat().st_size
    headers = {"Accept-Ranges": "bytes"}
    match = _RANGE.match(range_header.strip()) if range_header else None
    if match is None or match.groups() == ("", ""):
        return Stream(_chunks(path, 0, size), media_type=media_type, headers={**headers, "Content-Length": str(size)})
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return Response(
            {"status_code": 416, "detail": f"range {range_header!r} lies outside the file of {size} bytes"},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    length = end - start + 1
    return Stream(
        _chunks(path, start, length),
        status_code=206,
        media_type=media_type,
        headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(length)},
    )
