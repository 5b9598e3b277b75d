"""The S3 backend (AWS S3, Cloudflare R2, MinIO, Ceph): sources under `CLIPLOG_S3_SOURCE_PREFIX` of
`CLIPLOG_S3_BUCKET`, outputs under `CLIPLOG_S3_OUTPUT_PREFIX` of `CLIPLOG_S3_OUTPUT_BUCKET` (default the same
bucket), through `obstore` (async, Rust: nothing blocks the event loop; chosen by `bench/storage_client_bench.py`).

Credentials come from the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
web identity, the container and instance metadata, which obstore reads itself) or, when no key is in the
environment, from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`,
profile `AWS_PROFILE` or `default`).

Each request is bounded (`CLIPLOG_S3_TIMEOUT`) and retried by the client only briefly (connection errors and 5xx,
within a few seconds): an attempt that cannot reach the store fails `storage_unavailable` and is retried by the
clip's retry policy, within its deadline. Every error becomes a `StorageError` whose message names the bucket and
the key and says what the store answered, never a URL's query string or a credential.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

import msgspec
import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from storage.base import ObjectMissing, StorageDenied, StorageError, StorageUnavailable, StoredObject

if TYPE_CHECKING:
    from obstore import ObjectMeta

MAX_SINGLE_PUT = 5 * 1024**3 - 1  # one PUT up to S3's limit; above it, a multipart upload completed only when whole
READ_CHUNK = 1024 * 1024


class S3Config(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    output_bucket: str | None = None  # None: the sources' bucket
    endpoint: str | None = None  # None: AWS
    region: str = "us-east-1"
    source_prefix: str = "sources/"
    output_prefix: str = "clips/"
    path_style: bool = False
    timeout: float = 30.0  # seconds per request
    retry_seconds: float = 5.0  # the client's own retries of connection errors and 5xx stop after this

    @property
    def outputs_bucket(self) -> str:
        return self.output_bucket or self.bucket


def shared_file_credentials(env: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """`aws_access_key_id`, `aws_secret_access_key` (and `aws_session_token`) of the profile in the shared
    credentials file, or {} when there is none or the environment names a key itself."""
    if env.get("AWS_ACCESS_KEY_ID"):
        return {}
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return {}
    profile = env.get("AWS_PROFILE") or "default"
    if not parser.has_section(profile):
        return {}
    section = parser[profile]
    found = {}
    for field, option in (("access_key_id", "aws_access_key_id"), ("secret_access_key", "aws_secret_access_key"),
                          ("session_token", "aws_session_token")):  # fmt: skip
        if section.get(option):
            found[field] = section[option]
    return found if "access_key_id" in found and "secret_access_key" in found else {}


def _status(error: BaseException) -> int | None:
    """The HTTP status the store answered, read from obstore's error (its message carries the response)."""
    text = str(error)
    match = re.search(r"non-2xx status code: (\d{3})", text) or re.search(r"status: (\d{3})", text)
    return int(match[1]) if match else None


_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _cause(error: BaseException) -> str:
    """A short, secret-free account of what went wrong (the status and the store's error code, or the kind of
    network failure)."""
    text = str(error)
    status = _status(error)
    code = _S3_CODE.search(text)
    if status is not None:
        return f"HTTP {status}" + (f" {code[1]}" if code else "")
    lowered = text.lower()
    for words, said in (("timed out", "timed out"), ("timeout", "timed out"), ("connect", "connection failed"),
                        ("connection", "connection lost"), ("closed", "connection closed"), ("reset", "connection reset"),
                        ("dns", "name lookup failed")):  # fmt: skip
        if words in lowered:
            return said
    return type(error).__name__


def storage_error(error: BaseException, bucket: str, key: str, doing: str) -> StorageError:
    """The StorageError for obstore's `error` while `doing` (e.g. "reading") `key` in `bucket`."""
    where = f"s3://{bucket}/{key}"
    status = _status(error)
    cause = _cause(error)
    if isinstance(error, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403):
        return StorageDenied(f"Access to {where} was denied while {doing} it ({cause}).")
    if "NoSuchBucket" in str(error):
        return StorageDenied(f"The bucket {bucket!r} does not exist (while {doing} {where}).")
    if isinstance(error, (NotFoundError, FileNotFoundError)) or status == 404:
        return ObjectMissing(f"There is no object {where} ({doing} it answered {cause}).")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return StorageDenied(f"The store refused {doing} {where} ({cause}).")
    return StorageUnavailable(f"The store did not answer {doing} {where} ({cause}); it may be unreachable.")


def _stored(meta: ObjectMeta | dict[str, Any], prefix: str) -> StoredObject:
    etag = meta.get("e_tag") or f'"{meta["size"]:x}-{int(meta["last_modified"].timestamp() * 1e6):x}"'
    if not etag.startswith(('"', 'W/"')):
        etag = f'"{etag}"'
    return StoredObject(
        key=meta["path"].removeprefix(prefix), size=meta["size"], etag=etag, modified=meta["last_modified"]
    )


class S3Storage:
    backend = "s3"

    def __init__(self, config: S3Config, *, credentials: dict[str, str] | None = None) -> None:
        self.config = config
        keys = shared_file_credentials() if credentials is None else credentials
        options: dict[str, Any] = {
            "region": config.region,
            "virtual_hosted_style_request": not config.path_style,
            "checksum_algorithm": "sha256",
            **keys,
        }
        if config.endpoint:
            options["endpoint"] = config.endpoint.rstrip("/")
        client = {
            "timeout": timedelta(seconds=config.timeout),
            "connect_timeout": timedelta(seconds=min(5.0, config.timeout)),
            "allow_http": bool(config.endpoint and config.endpoint.startswith("http://")),
        }
        retry = {
            "max_retries": 2,
            "retry_timeout": timedelta(seconds=config.retry_seconds),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2},
        }
        self.sources = S3Store(config.bucket, client_options=client, retry_config=retry, **options)  # type: ignore[arg-type]
        self.outputs = (
            self.sources
            if config.outputs_bucket == config.bucket
            else S3Store(config.outputs_bucket, client_options=client, retry_config=retry, **options)  # type: ignore[arg-type]
        )

    def _source(self, key: str) -> str:
        return self.config.source_prefix + key

    def source_location(self, key: str) -> str:
        """`s3://bucket/prefix/key`, for messages."""
        return f"s3://{self.config.bucket}/{self._source(key)}"

    def _output(self, name: str) -> str:
        return self.config.output_prefix + name

    async def ping(self) -> None:
        """One listing of at most one key under the source prefix (and the output prefix, in another bucket)."""
        for store, bucket, prefix in self._buckets():
            try:
                stream = obstore.list(store, prefix.rstrip("/") or None, chunk_size=1)
                await stream.__anext__()
            except StopAsyncIteration:
                pass
            except (BaseError, OSError) as error:
                raise storage_error(error, bucket, prefix, "listing") from None

    def _buckets(self) -> list[tuple[S3Store, str, str]]:
        found = [(self.sources, self.config.bucket, self.config.source_prefix)]
        if self.outputs is not self.sources:
            found.append((self.outputs, self.config.outputs_bucket, self.config.output_prefix))
        return found

    async def _head(self, store: S3Store, bucket: str, path: str, prefix: str) -> StoredObject:
        try:
            return _stored(await obstore.head_async(store, path), prefix)
        except (BaseError, OSError) as error:
            failure = storage_error(error, bucket, path, "reading")
        if isinstance(failure, ObjectMissing):  # a HEAD's 404 has no body: tell a missing bucket from a missing key
            try:
                await obstore.list(store, None, chunk_size=1).__anext__()
            except StopAsyncIteration:
                pass
            except (BaseError, OSError) as error:
                failure = storage_error(error, bucket, path, "reading")
        raise failure

    async def head_source(self, key: str) -> StoredObject:
        return await self._head(self.sources, self.config.bucket, self._source(key), self.config.source_prefix)

    async def head_output(self, name: str) -> StoredObject:
        return await self._head(self.outputs, self.config.outputs_bucket, self._output(name), self.config.output_prefix)

    async def _read(self, store: S3Store, bucket: str, path: str, start: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        try:
            result = await obstore.get_async(store, path, options={"range": (start, start + length)})
            async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                yield bytes(chunk)
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "reading") from None

    def read_source(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(self.sources, self.config.bucket, self._source(key), start, length)

    def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(self.outputs, self.config.outputs_bucket, self._output(name), start, length)

    async def _sign(self, store: S3Store, bucket: str, path: str, expires_seconds: float) -> str:
        try:
            return await obstore.sign_async(store, "GET", path, timedelta(seconds=max(1, int(expires_seconds))))
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "signing a URL for") from None

    async def source_input(self, key: str, expires_seconds: float) -> str:
        return await self._sign(self.sources, self.config.bucket, self._source(key), expires_seconds)

    async def output_url(self, name: str, expires_seconds: float) -> str:
        return await self._sign(self.outputs, self.config.outputs_bucket, self._output(name), expires_seconds)

    async def list_sources(self, after: str | None, limit: int) -> list[StoredObject]:
        prefix = self.config.source_prefix
        found: list[StoredObject] = []
        if limit <= 0:
            return found
        try:
            stream = obstore.list(
                self.sources,
                prefix.rstrip("/") or None,
                offset=prefix + after if after is not None else None,
                chunk_size=min(1000, max(limit, 1)),
            )
            async for chunk in stream:
                for meta in chunk:
                    item = _stored(meta, prefix)
                    if not meta["path"].startswith(prefix) or item.key.endswith("/"):
                        continue
                    found.append(item)
                    if len(found) >= limit:
                        return sorted(found, key=lambda o: o.key)
        except (BaseError, OSError) as error:
            raise storage_error(error, self.config.bucket, prefix, "listing") from None
        return sorted(found, key=lambda o: o.key)

    async def put_output(self, local_path: Path, name: str) -> StoredObject:
        """One PUT (the object appears whole or not at all; above 5 GiB a multipart upload, which S3 shows only once
        completed), sent with its SHA-256 checksum (`x-amz-checksum-sha256`), which the store checks against the
        body it received and refuses on a mismatch; then a HEAD must show the file's size and the ETag the PUT
        returned (so the object under the key is this upload, whole). A plain MD5 ETag is not compared with the
        file: with SSE-KMS, AWS's single-PUT ETags are not MD5s, and the checksum already covers the body."""
        bucket, path = self.config.outputs_bucket, self._output(name)
        size = (await asyncio.to_thread(local_path.stat)).st_size
        single = size <= MAX_SINGLE_PUT
        try:
            put = await obstore.put_async(
                self.outputs,
                path,
                local_path,
                attributes={"Content-Type": "video/mp4"},
                use_multipart=not single,
                chunk_size=64 * 1024 * 1024,
            )
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "uploading") from None
        try:
            stored = await self._head(self.outputs, bucket, path, self.config.output_prefix)
        except ObjectMissing:
            raise StorageUnavailable(f"The upload of s3://{bucket}/{path} is not there after it was accepted.") from None
        etag = (put.get("e_tag") or "").strip('"')
        if stored.size != size or (etag and etag != stored.etag.strip('"')):
            await self.delete_output(name)
            raise StorageUnavailable(
                f"The upload of s3://{bucket}/{path} did not arrive intact ({stored.size} bytes, ETag {stored.etag}; "
                f"expected {size} bytes, ETag \"{etag}\"); it was removed."
            )
        return stored

    async def delete_output(self, name: str) -> None:
        bucket, path = self.config.outputs_bucket, self._output(name)
        try:
            await obstore.delete_async(self.outputs, path)
        except (NotFoundError, FileNotFoundError):
            return
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "deleting") from None

    async def list_outputs(self) -> AsyncIterator[StoredObject]:
        prefix = self.config.output_prefix
        try:
            async for chunk in obstore.list(self.outputs, prefix.rstrip("/") or None, chunk_size=1000):
                for meta in chunk:
                    if meta["path"].startswith(prefix):
                        yield _stored(meta, prefix)
        except (BaseError, OSError) as error:
            raise storage_error(error, self.config.outputs_bucket, prefix, "listing") from None

    async def close(self) -> None:
        return None
