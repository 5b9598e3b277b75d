"""The API's side of object storage (api/stored.py) against a fake `Storage`: which key or store answer becomes
which HTTP answer, the redirect, the proxy's ranges and validators, the paged source listing, health's bounded
check. No network: the fake keeps its objects in memory (the real store is tested in tests/e2e/test_s3.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import AsyncIterator

import pytest
from litestar.response import Stream

from api import stored
from api.errors import domain_error, status_for, storage_error
from domain.errors import InvalidInput, NotFound, Unavailable
from runtime.settings import Settings
from storage.base import ObjectMissing, StorageDenied, StorageUnavailable, StoredObject

MODIFIED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
SECRET_URL = "http://127.0.0.1:9/bucket/clips/p/c.r1a1.mp4?X-Amz-Signature=secret"


class FakeStorage:
    backend = "s3"

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects = objects or {}
        self.fail: Exception | None = None  # raised by every call
        self.fail_reading_after: int | None = None  # bytes sent before a read fails
        self.hang = False
        self.reads: list[tuple[str, int, int]] = []
        self.listed: list[tuple[str | None, int]] = []

    async def _maybe_fail(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail

    def _object(self, key: str) -> StoredObject:
        if key not in self.objects:
            raise ObjectMissing(f"no object {key} in bucket b")
        return StoredObject(key=key, size=len(self.objects[key]), etag=f'"{len(self.objects[key])}"', modified=MODIFIED)

    async def ping(self) -> None:
        await self._maybe_fail()

    async def head_source(self, key: str) -> StoredObject:
        await self._maybe_fail()
        return self._object(key)

    async def head_output(self, name: str) -> StoredObject:
        await self._maybe_fail()
        return self._object(name)

    async def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        self.reads.append((name, start, length))
        await self._maybe_fail()
        data = self.objects[name][start : start + length]
        for offset in range(0, len(data), 4):
            if self.fail_reading_after is not None and offset >= self.fail_reading_after:
                raise StorageUnavailable("the connection to bucket b broke while reading " + name)
            yield data[offset : offset + 4]

    async def output_url(self, name: str, expires_seconds: float) -> str:
        await self._maybe_fail()
        return SECRET_URL

    async def list_sources(self, after: str | None, limit: int) -> list[StoredObject]:
        self.listed.append((after, limit))
        await self._maybe_fail()
        keys = sorted(k for k in self.objects if after is None or k > after)
        return [self._object(k) for k in keys[:limit]]


def services(storage: FakeStorage, **settings: object) -> SimpleNamespace:
    values = {"storage": "s3", "s3_bucket": "b", **settings}
    return SimpleNamespace(settings=Settings(**values), store=storage)  # type: ignore[arg-type]


async def body_of(response: Stream) -> bytes:
    return b"".join([chunk async for chunk in response.iterator])  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "http://example.com/a.mp4", "-i", "", "a//b.mp4", "a/./b.mp4"])
async def test_a_bad_key_is_invalid_input_naming_the_source_field_and_the_store_is_never_asked(key: str) -> None:
    store = FakeStorage({key: b"x"})
    with pytest.raises(InvalidInput) as caught:
        await stored.check_source(services(store), key)  # type: ignore[arg-type]
    assert caught.value.extra == {"field": "source"} and status_for(caught.value) == 400
    assert "is not an object under sources/ in bucket b: source must" in caught.value.detail


async def test_registration_asks_the_store_and_maps_each_answer() -> None:
    store = FakeStorage({"games/match.mp4": b"video"})
    await stored.check_source(services(store), "games/match.mp4")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="'games/other.mp4' is not an object under sources/ in bucket b"):
        await stored.check_source(services(store), "games/other.mp4")  # type: ignore[arg-type]
    store.fail = StorageDenied("access denied to sources/games/match.mp4 in bucket b")
    with pytest.raises(InvalidInput, match="cannot be read by cliplog: access denied"):
        await stored.check_source(services(store), "games/match.mp4")  # type: ignore[arg-type]
    store.fail = StorageUnavailable("bucket b did not answer")
    with pytest.raises(Unavailable, match="object storage is unavailable") as caught:
        await stored.check_source(services(store), "games/match.mp4")  # type: ignore[arg-type]
    response = domain_error(None, caught.value)  # type: ignore[arg-type]
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"


async def test_a_hung_store_is_a_503_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored, "REQUEST_SECONDS", 0.05)
    store = FakeStorage({"games/match.mp4": b"video"})
    store.hang = True
    with pytest.raises(Unavailable, match="did not answer within 0.05 s"):
        await stored.check_source(services(store), "games/match.mp4")  # type: ignore[arg-type]


async def test_the_redirect_is_a_307_to_the_presigned_url_that_nothing_keeps() -> None:
    store = FakeStorage({"p/c.r1a1.mp4": b"0123456789"})
    for method in ("GET", "HEAD"):
        response = await stored.serve_stored(services(store), method, {}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
        assert response.status_code == 307
        assert response.headers["Location"] == SECRET_URL and response.headers["Cache-Control"] == "private, no-store"
    assert store.reads == []


async def test_the_proxy_answers_as_the_local_file_route_does() -> None:
    data = bytes(range(10))
    store = FakeStorage({"p/c.r1a1.mp4": data})
    s3 = services(store, s3_serve="proxy")
    whole = await stored.serve_stored(s3, "GET", {}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert whole.status_code == 200 and whole.headers["Content-Length"] == "10" and whole.headers["ETag"] == '"10"'
    assert await body_of(whole) == data  # type: ignore[arg-type]
    part = await stored.serve_stored(s3, "GET", {"range": "bytes=3-8"}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert part.status_code == 206 and part.headers["Content-Range"] == "bytes 3-8/10"
    assert await body_of(part) == data[3:9]  # type: ignore[arg-type]
    assert store.reads[-1] == ("p/c.r1a1.mp4", 3, 6)
    reads = len(store.reads)
    beyond = await stored.serve_stored(s3, "GET", {"range": "bytes=10-"}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == "bytes */10"
    cached = await stored.serve_stored(s3, "GET", {"if-none-match": '"10"'}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert cached.status_code == 304
    head = await stored.serve_stored(s3, "HEAD", {"range": "bytes=0-0"}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert head.status_code == 206 and head.headers["Content-Length"] == "1"
    assert len(store.reads) == reads  # 416, 304 and HEAD read nothing


async def test_the_proxy_maps_a_missing_object_and_a_store_failing_before_the_first_byte() -> None:
    store = FakeStorage({"p/c.r1a1.mp4": b"0123456789"})
    s3 = services(store, s3_serve="proxy")
    with pytest.raises(NotFound, match="missing from the bucket"):
        await stored.serve_stored(s3, "GET", {}, "p/gone.mp4", "gone")  # type: ignore[arg-type]

    class FailsOnRead(FakeStorage):
        async def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
            raise StorageUnavailable("bucket b answered 503 for clips/" + name)
            yield b""  # pragma: no cover - an async generator

    with pytest.raises(Unavailable, match="answered 503"):
        await stored.serve_stored(services(FailsOnRead(store.objects), s3_serve="proxy"), "GET", {}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]


async def test_a_failure_after_the_first_bytes_breaks_the_body_and_is_logged_without_a_url(caplog) -> None:  # noqa: ANN001
    store = FakeStorage({"p/c.r1a1.mp4": bytes(range(20))})
    store.fail_reading_after = 8
    response = await stored.serve_stored(services(store, s3_serve="proxy"), "GET", {}, "p/c.r1a1.mp4", "c")  # type: ignore[arg-type]
    assert response.status_code == 200
    with pytest.raises(stored.BodyBroken):
        await body_of(response)  # type: ignore[arg-type]
    assert "broke while reading" in caplog.text and "X-Amz" not in caplog.text


def test_a_storage_error_no_route_mapped_is_a_503_with_its_code() -> None:
    request = SimpleNamespace(method="GET", url=SimpleNamespace(path="/x"))
    response = storage_error(request, StorageDenied("access denied to clips/x in bucket b"))  # type: ignore[arg-type]
    assert response.status_code == 503 and response.content["extra"] == {"code": "storage_denied"}


async def test_the_listing_pages_by_key_and_offers_videos_only() -> None:
    keys = ["a.mp4", "b.txt", ".hidden/c.mp4", "d/.e.mp4", "f.MOV", "g.mkv", "h.mp4"]
    store = FakeStorage({k: b"x" for k in keys})
    first = await stored.list_videos(store, None, 2)  # type: ignore[arg-type]
    assert [o.key for o in first.found] == ["a.mp4", "f.MOV"] and first.next_after == "f.MOV"
    second = await stored.list_videos(store, first.next_after, 2)  # type: ignore[arg-type]
    assert [o.key for o in second.found] == ["g.mkv", "h.mp4"] and second.next_after is None
    none = await stored.list_videos(store, "h.mp4", 2)  # type: ignore[arg-type]
    assert none.found == [] and none.next_after is None


async def test_a_listing_of_many_non_videos_stops_after_a_bounded_number_of_calls() -> None:
    store = FakeStorage({f"notes/{i:04}.txt": b"x" for i in range(100)})
    page = await stored.list_videos(store, None, 3)  # type: ignore[arg-type]
    assert page.found == [] and len(store.listed) == stored.MAX_LIST_CALLS
    assert page.next_after == f"notes/{stored.MAX_LIST_CALLS * 4 - 1:04}.txt"  # the client goes on from there


async def test_health_checks_the_store_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStorage()
    assert await stored.storage_check(services(store)) == stored.StorageCheck(backend="s3", ok=True)  # type: ignore[arg-type]
    store.fail = StorageUnavailable("bucket b did not answer")
    assert await stored.storage_check(services(store)) == stored.StorageCheck(  # type: ignore[arg-type]
        backend="s3", ok=False, detail="bucket b did not answer"
    )
    monkeypatch.setattr(stored, "HEALTH_SECONDS", 0.05)
    store.fail, store.hang = None, True
    check = await asyncio.wait_for(stored.storage_check(services(store)), 1)  # type: ignore[arg-type]
    assert check.ok is False and "no answer within 0.05 s" in (check.detail or "")

