"""The storage contract (storage/base.py) held by both backends: the local folders and an S3 bucket on moto's
server (tests/s3server.py). Errors are the contract's, with the bucket and key in their messages."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from storage.base import ObjectMissing, StorageDenied, StorageUnavailable
from storage.local import LocalStorage
from tests.s3.support import s3_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path: Path, s3_server):  # noqa: ANN001, ANN201
    if request.param == "local":
        media, clips = tmp_path / "media", tmp_path / "clips"
        media.mkdir()
        (media / "games").mkdir()
        (media / "games" / "match.mp4").write_bytes(bytes(range(256)) * 40)
        (media / "b.mp4").write_bytes(b"b")
        return LocalStorage(media, clips)
    bucket = f"b-{secrets.token_hex(4)}"
    s3_server.create_bucket(bucket)
    s3_server.put_bytes(bucket, "sources/games/match.mp4", bytes(range(256)) * 40)
    s3_server.put_bytes(bucket, "sources/b.mp4", b"b")
    s3_server.put_bytes(bucket, "elsewhere/c.mp4", b"c")
    return s3_storage(s3_server, bucket)


async def collect(chunks) -> bytes:  # noqa: ANN001
    return b"".join([chunk async for chunk in chunks])


async def test_sources_are_headed_read_by_range_listed_by_key_and_opened(storage, s3_gate):
    head = await storage.head_source("games/match.mp4")
    assert head.key == "games/match.mp4" and head.size == 10240 and head.etag.startswith('"') and head.modified.tzinfo
    assert await collect(storage.read_source("games/match.mp4", 300, 10)) == (bytes(range(256)) * 2)[44:54]
    assert await collect(storage.read_source("games/match.mp4", 10230, 100)) == bytes(range(246, 256))
    listed = await storage.list_sources(None, 10)
    assert [o.key for o in listed] == ["b.mp4", "games/match.mp4"]
    assert [o.key for o in await storage.list_sources("b.mp4", 10)] == ["games/match.mp4"]
    assert [o.key for o in await storage.list_sources(None, 1)] == ["b.mp4"]
    opened = await storage.source_input("games/match.mp4", 60)
    assert opened.endswith("games/match.mp4") if storage.backend == "local" else "X-Amz-Signature=" in opened
    with pytest.raises(ObjectMissing, match="nope.mp4"):
        await storage.head_source("nope.mp4")
    await storage.ping()


async def test_outputs_are_published_whole_checked_listed_and_deleted(storage, tmp_path: Path, s3_gate):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(secrets.token_bytes(70_000))
    content = cut.read_bytes()
    stored = await storage.put_output(cut, "p1/c1.r1a1.mp4")
    assert stored.key == "p1/c1.r1a1.mp4" and stored.size == 70_000
    assert (await storage.head_output("p1/c1.r1a1.mp4")).etag == stored.etag
    assert await collect(storage.read_output("p1/c1.r1a1.mp4", 0, 70_000)) == content
    assert [o.key async for o in storage.list_outputs()] == ["p1/c1.r1a1.mp4"]
    if storage.backend == "s3":
        assert (await storage.output_url("p1/c1.r1a1.mp4", 60)).count("X-Amz-Expires=60") == 1
    await storage.delete_output("p1/c1.r1a1.mp4")
    await storage.delete_output("p1/c1.r1a1.mp4")  # idempotent
    assert [o async for o in storage.list_outputs()] == []
    with pytest.raises(ObjectMissing):
        await storage.head_output("p1/c1.r1a1.mp4")


async def test_a_missing_bucket_is_denied_and_a_closed_store_unavailable_naming_bucket_and_key(s3_server, s3_gate):
    missing = s3_storage(s3_server, "no-such-bucket-here")
    with pytest.raises(StorageDenied, match="no-such-bucket-here"):
        await missing.head_source("x.mp4")
    with pytest.raises(StorageDenied, match="no-such-bucket-here"):
        await missing.ping()
    bucket = f"b-{secrets.token_hex(4)}"
    s3_server.create_bucket(bucket)
    store = s3_storage(s3_server, bucket)
    s3_gate.refuse()
    with pytest.raises(StorageUnavailable, match=f"s3://{bucket}/sources/x.mp4") as caught:
        await store.head_source("x.mp4")
    assert "X-Amz" not in str(caught.value) and "cliplog-test" not in str(caught.value)
