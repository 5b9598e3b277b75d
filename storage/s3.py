"""The S3 backend (AWS S3, Cloudflare R2, MinIO, Ceph): sources under `CLIPLOG_S3_SOURCE_PREFIX` of
`CLIPLOG_S3_BUCKET`, outputs under `CLIPLOG_S3_OUTPUT_PREFIX` of `CLIPLOG_S3_OUTPUT_BUCKET` (default the same
bucket), through `obstore` (async, Rust: nothing blocks the event loop; chosen by `bench/storage_client_bench.py`).

Credentials come from the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
web identity, the container and instance metadata, which obstore reads itself) or, when no key is in the
environment, from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`,
profile `AWS_PROFILE` or `default`).

Each request without a body transfer (HEAD, a listing's page, DELETE, signing) is bounded by `CLIPLOG_S3_TIMEOUT`,
and so is each chunk of a body read (an idle limit: a slow read that keeps moving goes on); an upload takes as long
as its size needs, within the attempt's deadline (the worker's `bounded`). Requests are retried by the client only
briefly (connection errors and 5xx, within a few seconds): an attempt that cannot reach the store fails
`storage_unavailable` and is retried by the clip's retry policy, within its deadline. Every error becomes a
`StorageError` whose message names the bucket and the key and says what the store answered, never a URL's query
string or a credential.
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

MULTIPART_ABOVE = 64 * 1024 * 1024  # one PUT up to this; above it, a multipart upload (S3 shows it only once whole)
PART_SIZE = 64 * 1024 * 1024
# Parts in flight at once: obstore holds each in memory (its default of 12 would be 768 MiB for one upload; two
# slots of a worker uploading at once, twice that)
UPLOAD_CONCURRENCY = 2
READ_CHUNK = 256 * 1024  # a body read yields at least this much at a time (an idle limit applies per chunk)
# The HTTP client's own limit on a whole request, body included: none that matters. A body transfer takes as long
# as its size needs (an upload is bounded by the attempt's deadline, a read by `timeout` without a byte); every
# other request is bounded by `timeout` here, around the call.
CLIENT_TIMEOUT = timedelta(days=1)


class S3Config(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    output_bucket: str | None = None  # None: the sources' bucket
    endpoint: str | None = None  # None: AWS
    region: str = "us-east-1"
    source_prefix: str = "sources/"
    output_prefix: str = "clips/"
    path_style: bool = False
    timeout: float = 30.0  # seconds a request without a body may take, and a body read may go without a byte
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


class BucketMissing(StorageDenied):
    """The store answered NoSuchBucket (storage_denied: no retry can fix it)."""


# The store's error codes that no retry can fix: the credentials, the policy, the bucket itself. Any other 4xx
# (400 RequestTimeout, 409 OperationAborted, 416 InvalidRange, 503/400 SlowDown, ...) may pass: storage_unavailable.
DENIED_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "AuthorizationHeaderMalformed", "InvalidAccessKeyId",
    "InvalidBucketName", "InvalidToken", "NoSuchBucket", "NotSignedUp", "SignatureDoesNotMatch",
})  # fmt: skip


def storage_error(error: BaseException, bucket: str, key: str, doing: str) -> StorageError:
    """The StorageError for obstore's `error` while `doing` (e.g. "reading") `key` in `bucket`: denied only for
    what really means denied (401, 403, DENIED_CODES), missing for a 404 of the key, unavailable otherwise."""
    where = f"s3://{bucket}/{key}"
    text = str(error)
    status = _status(error)
    cause = _cause(error)
    found = _S3_CODE.search(text)
    code = found[1] if found else ("NoSuchBucket" if "NoSuchBucket" in text else None)
    if code == "NoSuchBucket":
        return BucketMissing(f"The bucket {bucket!r} does not exist (while {doing} {where}).")
    if isinstance(error, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403) or code in DENIED_CODES:
        return StorageDenied(f"Access to {where} was denied while {doing} it ({cause}).")
    if isinstance(error, (NotFoundError, FileNotFoundError)) or status == 404:
        return ObjectMissing(f"There is no object {where} ({doing} it answered {cause}).")
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
            "timeout": CLIENT_TIMEOUT,
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
                await self._within(stream.__anext__(), bucket, prefix, "listing")
            except StopAsyncIteration:
                pass
            except (BaseError, OSError) as error:
                raise storage_error(error, bucket, prefix, "listing") from None

    async def _within(self, call, bucket: str, key: str, doing: str):  # noqa: ANN001, ANN202 - an awaitable, its result
        """Await a request without a body transfer (or one chunk of a body) for at most `timeout` seconds."""
        try:
            async with asyncio.timeout(self.config.timeout):
                return await call
        except TimeoutError:
            raise StorageUnavailable(
                f"The store did not answer {doing} s3://{bucket}/{key} within {self.config.timeout:g} s; "
                "it may be unreachable."
            ) from None

    def _buckets(self) -> list[tuple[S3Store, str, str]]:
        found = [(self.sources, self.config.bucket, self.config.source_prefix)]
        if self.outputs is not self.sources:
            found.append((self.outputs, self.config.outputs_bucket, self.config.output_prefix))
        return found

    async def _head(self, store: S3Store, bucket: str, path: str, prefix: str) -> StoredObject:
        try:
            return _stored(await self._within(obstore.head_async(store, path), bucket, path, "reading"), prefix)
        except (BaseError, OSError) as error:
            failure = storage_error(error, bucket, path, "reading")
        if isinstance(failure, ObjectMissing):  # a HEAD's 404 has no body: tell a missing bucket from a missing key
            # by one listing of at most one key under the prefix (a least-privilege policy may allow listing only
            # there); only the store's NoSuchBucket changes the verdict: a refused or failed probe keeps the 404's.
            try:
                probe = obstore.list(store, prefix.rstrip("/") or None, chunk_size=1)
                await self._within(probe.__anext__(), bucket, path, "reading")
            except (StopAsyncIteration, StorageError):
                pass
            except (BaseError, OSError) as error:
                probed = storage_error(error, bucket, path, "reading")
                if isinstance(probed, BucketMissing):
                    failure = probed
        raise failure

    async def head_source(self, key: str) -> StoredObject:
        return await self._head(self.sources, self.config.bucket, self._source(key), self.config.source_prefix)

    async def head_output(self, name: str) -> StoredObject:
        return await self._head(self.outputs, self.config.outputs_bucket, self._output(name), self.config.output_prefix)

    async def _read(self, store: S3Store, bucket: str, path: str, start: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        try:
            # The answer's headers within `timeout`, then each chunk of the body within `timeout` of the last: a
            # slow but moving transfer goes on as long as it needs, a store that stopped sending fails it.
            result = await self._within(
                obstore.get_async(store, path, options={"range": (start, start + length)}), bucket, path, "reading"
            )
            chunks = result.stream(min_chunk_size=READ_CHUNK)
            while True:
                try:
                    chunk = await self._within(chunks.__anext__(), bucket, path, "reading")
                except StopAsyncIteration:
                    return
                yield bytes(chunk)
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "reading") from None

    def read_source(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(self.sources, self.config.bucket, self._source(key), start, length)

    def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(self.outputs, self.config.outputs_bucket, self._output(name), start, length)

    async def _sign(self, store: S3Store, bucket: str, path: str, expires_seconds: float) -> str:
        try:
            return await self._within(
                obstore.sign_async(store, "GET", path, timedelta(seconds=max(1, int(expires_seconds)))),
                bucket, path, "signing a URL for",
            )  # fmt: skip
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
            async for chunk in self._pages(stream, self.config.bucket, prefix):
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
        """One PUT (the object appears whole or not at all; above 64 MiB a multipart upload of 64 MiB parts, which S3
        shows only once completed), sent with its SHA-256 checksum (`x-amz-checksum-sha256`), which the store checks
        against the body it received and refuses on a mismatch; then a HEAD must show the file's size and the ETag
        the PUT returned (so the object under the key is this upload, whole). A plain MD5 ETag is not compared with
        the file: with SSE-KMS, AWS's single-PUT ETags are not MD5s, and the checksum already covers the body."""
        bucket, path = self.config.outputs_bucket, self._output(name)
        size = (await asyncio.to_thread(local_path.stat)).st_size
        try:
            # Not bounded here: the body takes as long as its size needs; the worker bounds the whole upload by the
            # attempt's deadline (handlers/extraction.py `bounded`).
            put = await obstore.put_async(
                self.outputs,
                path,
                local_path,
                attributes={"Content-Type": "video/mp4"},
                use_multipart=size > MULTIPART_ABOVE,
                chunk_size=PART_SIZE,
                max_concurrency=UPLOAD_CONCURRENCY,
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
            await self._within(obstore.delete_async(self.outputs, path), bucket, path, "deleting")
        except (NotFoundError, FileNotFoundError):
            return
        except (BaseError, OSError) as error:
            raise storage_error(error, bucket, path, "deleting") from None

    async def list_outputs(self) -> AsyncIterator[StoredObject]:
        prefix = self.config.output_prefix
        try:
            stream = obstore.list(self.outputs, prefix.rstrip("/") or None, chunk_size=1000)
            async for chunk in self._pages(stream, self.config.outputs_bucket, prefix):
                for meta in chunk:
                    if meta["path"].startswith(prefix):
                        yield _stored(meta, prefix)
        except (BaseError, OSError) as error:
            raise storage_error(error, self.config.outputs_bucket, prefix, "listing") from None

    async def _pages(self, stream, bucket: str, prefix: str) -> AsyncIterator[Any]:  # noqa: ANN001 - obstore's list stream
        """A listing's pages, each within `timeout` of the last."""
        while True:
            try:
                page = await self._within(stream.__anext__(), bucket, prefix, "listing")
            except StopAsyncIteration:
                return
            yield page

    async def close(self) -> None:
        return None
