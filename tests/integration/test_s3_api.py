"""The API on S3 storage, in-process (Litestar's test client) against moto's S3 server through the gate
(`tests/s3server.py`), without a worker: a clip is registered (its source HEADed in the bucket), recorded as
completed with an object put in the bucket by the test, then served by redirect and by proxy; the store refused or
hung answers 503, never a 500. The whole pipeline with real processes is tests/e2e/test_s3.py."""

from __future__ import annotations

import httpx
import pytest

from domain.clip import Complete, Start
from runtime.settings import Settings
from tests.e2e.s3system import new_bucket
from tests.s3server import TEST_ENV, S3Server
from usecases.clips import handle
from usecases.services import utcnow

CLIP = {"source": "games/match.mp4", "start": 1.0, "end": 2.0}
DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def s3_client(app_client, s3_server: S3Server, s3_gate, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """`await s3_client(serve)` -> (client, bucket): the app on a fresh bucket holding sources/games/match.mp4."""
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)

    async def make(serve: str = "redirect"):  # noqa: ANN202
        bucket = new_bucket(s3_server, "api")
        s3_server.put_bytes(bucket, "sources/games/match.mp4", DATA)
        client = await app_client(
            storage="s3", s3_bucket=bucket, s3_endpoint=s3_server.endpoint, s3_path_style=True, s3_serve=serve,
            s3_timeout=3.0,
        )  # fmt: skip
        return client, bucket

    return make


async def _completed(client, pool, ids, s3_server: S3Server, bucket: str) -> tuple[str, str]:  # noqa: ANN001
    project = ids.project()
    response = await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": "c", **CLIP})
    assert response.status_code == 201, response.text
    output = f"{project}/c.r1a1.mp4"
    s3_server.put_bytes(bucket, f"clips/{output}", DATA)
    context = lambda: Settings().context(utcnow())  # noqa: E731
    await handle(pool, project, "c", Start(run=1, attempt=1, worker_id="w"), context)
    complete = Complete(run=1, attempt=1, bytes=len(DATA), duration_seconds=1.0, elapsed_seconds=0.1, output=output)
    await handle(pool, project, "c", complete, context)
    return project, f"/api/clips/projects/{project}/clips/c/file"


async def test_redirect_to_a_presigned_url_that_serves_the_object(s3_client, pool, ids, s3_server: S3Server) -> None:  # noqa: ANN001
    client, bucket = await s3_client("redirect")
    assert (await client.get("/api/config")).json()["file_links"] is True
    _, url = await _completed(client, pool, ids, s3_server, bucket)
    for method in ("GET", "HEAD"):
        moved = await client.request(method, url, follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["cache-control"] == "private, no-store"
    location = moved.headers["location"]
    assert location.startswith(f"{s3_server.endpoint}/{bucket}/clips/") and "X-Amz-Signature=" in location
    async with httpx.AsyncClient() as plain:  # no token: the URL itself is the permission
        assert (await plain.get(location)).content == DATA
        assert (await plain.get(location, headers={"Range": "bytes=10-19"})).content == DATA[10:20]
    answer = await client.get(url + "-link")
    link = answer.json()
    assert link["direct"] is True and link["expires_at"] and "X-Amz-Signature=" in link["url"]
    assert answer.headers["cache-control"] == "private, no-store"  # the link expires: no cache may keep it


async def test_the_proxy_serves_ranges_and_validators_from_the_bucket(s3_client, pool, ids, s3_server: S3Server) -> None:  # noqa: ANN001
    client, bucket = await s3_client("proxy")
    assert "file_links" not in (await client.get("/api/config")).json()
    _, url = await _completed(client, pool, ids, s3_server, bucket)
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.content == DATA and whole.headers["content-length"] == str(len(DATA))
    assert whole.headers["etag"].startswith('"') and whole.headers["last-modified"]
    part = await client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == DATA[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(DATA)}"
    assert (await client.get(url, headers={"Range": f"bytes={len(DATA)}-"})).status_code == 416
    assert (await client.get(url, headers={"If-None-Match": whole.headers["etag"]})).status_code == 304
    head = await client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(DATA)) and head.content == b""
    assert (await client.get(url + "-link")).json() == {"url": url, "direct": False}


async def test_a_listing_after_a_key_that_is_no_object_path_is_a_400(s3_client) -> None:  # noqa: ANN001
    client, _ = await s3_client("proxy")
    for after in ("a//b", "x/../y", "a\x01b"):
        answer = await client.get("/api/media", params={"after": after})
        assert answer.status_code == 400 and "after" in answer.json()["detail"], (after, answer.text)
    assert (await client.get("/api/media", params={"after": "a"})).status_code == 200


async def test_a_refused_or_hung_store_is_a_503_for_files_media_and_registration(
    s3_client, pool, ids, s3_server: S3Server, s3_gate, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    from api import stored

    monkeypatch.setattr(stored, "REQUEST_SECONDS", 2.0)
    client, bucket = await s3_client("proxy")
    project, url = await _completed(client, pool, ids, s3_server, bucket)
    for fault in (s3_gate.refuse, s3_gate.hang):
        fault()
        try:
            for answer in (
                await client.get(url),
                await client.get("/api/media"),
                await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": "d", **CLIP}),
            ):
                assert answer.status_code == 503, answer.text
                assert "object storage" in answer.json()["detail"] and answer.headers["retry-after"]
                assert "X-Amz" not in answer.text
        finally:
            s3_gate.open()
    assert (await client.get(f"/api/clips/projects/{project}/clips/d")).status_code == 404  # nothing appended
    assert (await client.get(url)).content == DATA
