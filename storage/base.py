"""The storage contract every backend keeps (`storage/local.py`: the media and output roots; `storage/s3.py`: an
S3-compatible bucket). The worker, the reaper and the API code against `Storage` only; `runtime/bootstrap.py` picks
the backend from `CLIPLOG_STORAGE`.

Keys: a source's key is its `source` string (relative to the source root or prefix, checked by
`storage.keys.source_key_problem`); an output's name is what `completed` records in `output` (relative to the
output root or prefix, `<project>/<clip>.r<run>a<attempt>.mp4`).

Errors: every failure is a `StorageError` whose message names the bucket (or root) and the key, never a presigned
URL or a credential, and whose `code` is the attempt's error code (domain/policy.py RETRYABLE).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import AsyncIterator, Protocol, runtime_checkable

import msgspec


class StoredObject(msgspec.Struct, frozen=True):
    key: str  # relative to its prefix (a source's `source` string, or an output name)
    size: int
    etag: str  # a quoted strong validator, as HTTP wants it ('"..."')
    modified: datetime  # tz-aware


class StorageError(Exception):
    """A storage call failed; `code` is the attempt's error code, the message names the bucket and the key."""

    code: str = "storage_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StorageUnavailable(StorageError):
    """Unreachable, a 5xx, a timeout: another attempt may succeed."""

    code = "storage_unavailable"


class StorageDenied(StorageError):
    """403, bad credentials, or a bucket that does not exist: no retry can fix it."""

    code = "storage_denied"


class ObjectMissing(StorageError):
    """No object under that key (404)."""

    code = "source_missing"


@runtime_checkable
class Storage(Protocol):
    backend: str  # "local" | "s3"

    async def ping(self) -> None:
        """Raises StorageError when the store does not answer (health)."""

    async def head_source(self, key: str) -> StoredObject: ...

    def read_source(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes `[start, start + length)` of a source (fewer at its end), in chunks."""

    async def source_input(self, key: str, expires_seconds: float) -> str:
        """What FFmpeg opens: a local path, or a presigned GET URL valid for `expires_seconds` (a secret: never log
        it; handlers/ffmpeg.py `redact` takes its query string out)."""

    async def list_sources(self, after: str | None, limit: int) -> list[StoredObject]:
        """Up to `limit` sources with keys greater than `after` (keyset paging), sorted by key."""

    async def put_output(self, local_path: Path, name: str) -> StoredObject:
        """Publish the validated file at `local_path` under `name`, whole or not at all, and check what the store
        holds (size, and ETag or checksum) before returning it. `local_path` may be moved away."""

    async def head_output(self, name: str) -> StoredObject: ...

    def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        """For the API's proxy mode."""

    async def output_url(self, name: str, expires_seconds: float) -> str:
        """A presigned GET URL (s3); the local backend has none (NotImplementedError)."""

    async def delete_output(self, name: str) -> None:
        """Idempotent: a missing object is not an error."""

    def list_outputs(self) -> AsyncIterator[StoredObject]:
        """Every object under the output root or prefix (for the orphan sweep), in no particular order."""

    async def close(self) -> None: ...
