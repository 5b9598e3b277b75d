"""S3 storage end to end, with real processes and a real S3 API (moto's server, `tests/s3server.py`): two
`cliplog serve` (one redirecting to presigned URLs, one proxying the bytes) and a worker, each with a data folder
of its own: they share only PostgreSQL, Redis and the bucket (README "Deployment beyond one machine").

- register a clip whose source is a key under the source prefix, cut it (copy and accurate), download it through
  the redirect (the presigned URL, Range included) and through the proxy (Range, HEAD, validators): the bytes are
  those in the bucket, the duration within the tolerances of tests/e2e/test_dev.py;
- bad keys and a missing object: 400 with a detail, nothing appended;
- `GET /api/media` lists the bucket's sources, paged;
- health names the backend; a hung store makes it `ok: false` within its bound, and registration answers 503
  (nothing appended) instead of hanging or failing with a 500;
- no presigned URL's signature in any process's log.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio

from api.auth import create_token
from handlers.ffmpeg import probe
from runtime import processes
from runtime.settings import find_ffmpeg, find_ffprobe
from tests.e2e.s3system import base_env, new_bucket, s3_env, stored_bytes
from tests.e2e.system import Api
from tests.faults.conftest import source_video  # noqa: F401 - the session's 30 s test video (a fixture)
from tests.s3server import S3Server

pytestmark = pytest.mark.timeout(240)

PROJECT = "p-s3"
BAD_KEYS = ["../x", "/etc/passwd", "http://example.com/match.mp4", "-i", "", "games/../../x.mp4", "games//match.mp4"]


class S3System:
    def __init__(self, root: Path, database_url: str, server: S3Server, source: Path) -> None:
        self.server = server
        self.bucket = new_bucket(server)
        server.put_object(self.bucket, "sources/games/match.mp4", source)
        server.put_object(self.bucket, "sources/games/second-half.mp4", source)
        server.put_bytes(self.bucket, "sources/games/notes.txt", b"not a video")
        self.source = source
        self.database_url = database_url
        self.token = asyncio.run(self._token())
        self.cluster = processes.Cluster(
            root, database_url=database_url, base_env=base_env(), env={"CLIPLOG_LOG_LEVEL": "INFO"}
        )
        try:
            # each process has a data folder of its own: no disk is shared
            self.redirecting = self._api("serve-redirect", root / "api-1", "redirect")
            self.proxying = self._api("serve-proxy", root / "api-2", "proxy")
            self.cluster.worker(CLIPLOG_DATA_DIR=str(root / "worker"), **s3_env(server, self.bucket))
        except BaseException:
            self.close()
            raise

    def _api(self, name: str, data_dir: Path, serve: str) -> Api:
        process = self.cluster.serve(name, CLIPLOG_DATA_DIR=str(data_dir), **s3_env(self.server, self.bucket, serve))
        return Api(process.url, self.token)

    async def _token(self) -> str:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await create_token(conn, "alice")
        finally:
            await conn.close()

    def event_count(self) -> int:
        async def count() -> int:
            conn = await asyncpg.connect(self.database_url)
            try:
                return await conn.fetchval("SELECT count(*) FROM events")
            finally:
                await conn.close()

        return asyncio.run(count())

    def output_key(self, clip_id: str) -> str:
        completed = [e for e in self.redirecting.history(PROJECT, clip_id) if e["type"] == "extraction.completed"]
        return "clips/" + completed[-1]["data"]["output"]

    def close(self) -> None:
        for api in (getattr(self, "redirecting", None), getattr(self, "proxying", None)):
            if api is not None:
                api.close()
        self.cluster.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def s3_database_url(make_database) -> str:  # noqa: ANN001
    return await make_database(migrated=True)


@pytest.fixture(scope="module")
def system(
    tmp_path_factory: pytest.TempPathFactory, s3_database_url: str, s3_server: S3Server, source_video: Path  # noqa: F811
) -> Iterator[S3System]:
    s3_server.gate.open()
    built = S3System(tmp_path_factory.mktemp("s3-e2e"), s3_database_url, s3_server, source_video)
    try:
        yield built
        logs = built.cluster.logs(tail=200_000)
        assert "X-Amz-Signature" not in logs and "X-Amz-Credential" not in logs, "a presigned URL reached a log"
    finally:
        built.close()


def _duration(data: bytes, tmp_path: Path) -> float:
    target = tmp_path / "clip.mp4"
    target.write_bytes(data)
    info = asyncio.run(probe(target, ffmpeg=find_ffmpeg(os.environ), ffprobe=find_ffprobe(os.environ)))
    assert info.has_video
    return info.duration


@pytest.mark.parametrize(("mode", "start", "end", "tolerance"), [("copy", 10.0, 20.0, 1.5), ("accurate", 3.3, 7.1, 0.5)])
def test_register_cut_and_download_through_the_redirect_and_the_proxy(
    system: S3System, tmp_path: Path, mode: str, start: float, end: float, tolerance: float
) -> None:
    api = system.redirecting
    clip_id = f"s3-{mode}"
    response = api.register(PROJECT, clip_id=clip_id, source="games/match.mp4", start=start, end=end, mode=mode)
    assert response.status_code == 201, response.text
    clip = api.wait_for(PROJECT, [clip_id], timeout=120)[clip_id]
    assert clip["status"] == "completed", clip
    in_bucket = stored_bytes(system.server, system.bucket, system.output_key(clip_id))
    assert len(in_bucket) == clip["bytes"]
    assert abs(_duration(in_bucket, tmp_path) - (end - start)) <= tolerance

    # the redirect: 307 to a presigned URL of the bucket, for GET and HEAD; the URL serves the bytes (and ranges)
    # without the token
    for method in ("GET", "HEAD"):
        moved = api.http.request(method, clip["file_url"])
        assert moved.status_code == 307, moved.text
        assert moved.headers["cache-control"] == "private, no-store"
    location = moved.headers["location"]
    assert location.startswith(f"{system.server.endpoint}/{system.bucket}/clips/") and "X-Amz-Signature=" in location
    direct = httpx.get(location, timeout=30)
    assert direct.status_code == 200 and direct.content == in_bucket
    followed = api.http.get(clip["file_url"], headers={"Range": "bytes=0-99"}, follow_redirects=True)
    assert followed.status_code == 206 and followed.content == in_bucket[:100]
    link = api.http.get(clip["file_url"] + "-link").json()
    assert link["direct"] is True and link["url"].startswith(f"{system.server.endpoint}/{system.bucket}/clips/")
    assert httpx.get(link["url"], headers={"Range": "bytes=100-199"}, timeout=30).content == in_bucket[100:200]

    # the proxy: what the local file route answers, from the bucket
    proxy = system.proxying
    whole = proxy.http.get(clip["file_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == in_bucket and whole.headers["content-length"] == str(len(in_bucket))
    etag, modified = whole.headers["etag"], whole.headers["last-modified"]
    part = proxy.http.get(clip["file_url"], headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == in_bucket[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(in_bucket) - 1}/{len(in_bucket)}"
    suffix = proxy.http.get(clip["file_url"], headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == in_bucket[-10:]
    beyond = proxy.http.get(clip["file_url"], headers={"Range": f"bytes={len(in_bucket)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(in_bucket)}"
    assert proxy.http.get(clip["file_url"], headers={"If-None-Match": etag}).status_code == 304
    assert proxy.http.get(clip["file_url"], headers={"If-Modified-Since": modified}).status_code == 304
    stale = proxy.http.get(clip["file_url"], headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == in_bucket
    head = proxy.http.head(clip["file_url"])
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(in_bucket))
    assert proxy.http.get(clip["file_url"] + "-link").json() == {"url": clip["file_url"], "direct": False}


@pytest.mark.parametrize("source", [*BAD_KEYS, "games/missing.mp4", "games"])
def test_a_bad_or_missing_key_is_400_with_a_detail_and_appends_nothing(system: S3System, source: str) -> None:
    before = system.event_count()
    response = system.redirecting.register(PROJECT, source=source, start=1.0, end=2.0)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == 400 and body["detail"]
    if source:  # the empty source is refused before the key rules, with the detail it always had
        assert "is not an object under sources/ in bucket" in body["detail"], body
        assert body["extra"] == {"field": "source"}
    assert system.event_count() == before


def test_the_media_list_comes_from_the_bucket_in_pages(system: S3System) -> None:
    api = system.redirecting
    listed = api.http.get("/api/media").json()
    assert listed == {"files": [{"path": "games/match.mp4", "bytes": system.source.stat().st_size},
                                {"path": "games/second-half.mp4", "bytes": system.source.stat().st_size}],
                      "truncated": False}  # fmt: skip
    first = api.http.get("/api/media", params={"limit": 1}).json()
    assert [f["path"] for f in first["files"]] == ["games/match.mp4"] and first["truncated"] is True
    second = api.http.get("/api/media", params={"limit": 1, "after": first["next_after"]}).json()
    assert [f["path"] for f in second["files"]] == ["games/second-half.mp4"] and second["truncated"] is False
    assert api.http.get("/api/media", params={"limit": 0}).status_code == 400


def test_health_and_registration_with_a_hung_store(system: S3System, s3_gate) -> None:  # noqa: ANN001
    api = system.redirecting
    health = httpx.get(f"{api.base_url}/api/extraction/health", timeout=10).json()
    assert health["storage"] == {"backend": "s3", "ok": True}
    s3_gate.hang()
    try:
        began = time.monotonic()
        health = httpx.get(f"{api.base_url}/api/extraction/health", timeout=30)
        assert time.monotonic() - began < 8, "health waited for the hung store"
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["storage"]["ok"] is False and health.json()["storage"]["backend"] == "s3"
        before = system.event_count()
        refused = api.register(PROJECT, source="games/match.mp4", start=1.0, end=2.0)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and "object storage" in refused.json()["detail"]
        assert system.event_count() == before
    finally:
        s3_gate.open()
    health = httpx.get(f"{api.base_url}/api/extraction/health", timeout=10).json()
    assert health["storage"] == {"backend": "s3", "ok": True}
