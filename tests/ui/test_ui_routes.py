"""The routes the web UI adds (api/ui_routes.py), in-process on the real PostgreSQL: the caller's projects, the
settings the page works with, the videos under the media root. All need a token and answer errors as JSON."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from api.ui_routes import find_videos
from domain.clip import Fail, Start
from usecases.clips import handle
from usecases.services import utcnow
from runtime.settings import Settings
from tests.e2e.system import ROOT



@pytest.fixture
def client_for(app_client):  # noqa: ANN001, ANN201
    return app_client


async def test_every_ui_route_needs_a_token(client_for) -> None:
    client = await client_for("alice")
    for path in ("/api/config", "/api/media", "/api/clips/projects"):
        response = await client.get(path, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401, path
        assert response.json()["status_code"] == 401 and response.json()["detail"], path
        assert (await client.get(path, headers={"Authorization": ""})).status_code == 401, path


async def test_config_reports_the_runtime_settings(client_for) -> None:
    client = await client_for("alice", poll_after=2.0, slow_after=42.0, max_clip_seconds=90.0, max_attempts=5)
    response = await client.get("/api/config")
    assert response.status_code == 200
    assert response.json() == {
        "user": "alice",
        "poll_after": 2.0,
        "slow_after": 42.0,
        "max_clip_seconds": 90.0,
        "max_attempts": 5,
    }


async def test_media_lists_video_files_by_relative_path(client_for, tmp_path: Path) -> None:
    client = await client_for("alice")
    assert (await client.get("/api/media")).json() == {"files": [], "truncated": False}  # no media folder yet
    media = tmp_path / "media"
    for name in ("games/b.mp4", "games/a.MOV", "top.mkv", "games/.partial.mp4", ".hidden/x.mp4", "notes.txt"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(b"x" * 10)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"secret")
    (media / "link.mp4").symlink_to(outside)  # a link out of the media root is not a source
    response = await client.get("/api/media")
    assert response.status_code == 200
    assert response.json() == {
        "files": [
            {"path": "games/a.MOV", "bytes": 10},
            {"path": "games/b.mp4", "bytes": 10},
            {"path": "top.mkv", "bytes": 10},
        ],
        "truncated": False,
    }
    listed = find_videos(media, limit=2)
    assert listed.truncated and len(listed.files) == 2


async def test_projects_are_the_callers_own_with_clips_by_status(client_for, pool: asyncpg.Pool, tmp_path: Path, ids) -> None:
    alice = await client_for("alice", slow_after=0.001)
    bob = await client_for("bob")
    source = tmp_path / "media" / "games" / "match.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"stand-in; the API only checks that it is a file")
    older, newer, theirs = ids.project(), ids.project(), ids.project()
    clip = {"source": "games/match.mp4", "start": 1.0, "end": 2.0}
    for project, client, clip_ids in ((older, alice, ["a"]), (newer, alice, ["b", "c"]), (theirs, bob, ["d"])):
        for clip_id in clip_ids:
            response = await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip_id, **clip})
            assert response.status_code == 201, response.text
    context = lambda: Settings().context(utcnow())  # noqa: E731
    await handle(pool, newer, "c", Start(run=1, attempt=1, worker_id="w"), context)
    await handle(pool, newer, "c", Fail(run=1, attempt=1, code="not_a_video", message="no", retryable=False), context)

    response = await alice.get("/api/clips/projects")
    assert response.status_code == 200
    projects = [p for p in response.json() if p["project_id"] in (older, newer, theirs)]
    assert [p["project_id"] for p in projects] == [newer, older]  # most recently active first; never bob's
    assert projects[0]["clips"] == 2 and projects[0]["statuses"] == {"pending": 1, "failed": 1}
    assert projects[0]["slow"] == 1  # pending for longer than SLOW_AFTER (1 ms here)
    assert projects[1]["clips"] == 1 and projects[1]["statuses"] == {"pending": 1}
    assert projects[0]["created_at"] and projects[0]["updated_at"]
    bobs = [p["project_id"] for p in (await bob.get("/api/clips/projects")).json()]
    assert theirs in bobs and older not in bobs and newer not in bobs


async def test_the_routes_are_in_the_openapi_document(client_for) -> None:
    client = await client_for("alice")
    response = await client.get("/schema")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/clips/projects", "/api/config", "/api/media"):
        assert "get" in paths[path], path


async def test_the_page_and_its_modules_are_served(client_for) -> None:
    client = await client_for("alice")
    page = await client.get("/")
    assert page.status_code == 200 and 'src="/app.js"' in page.text
    named = {"app.js", "api.js", "clip-state.js", "timeline.js", "feed-client.js"}
    for module in sorted(named | {path.name for path in (ROOT / "api" / "static").glob("*.js")}):
        response = await client.get(f"/{module}")
        assert response.status_code == 200, module
        assert "javascript" in response.headers["content-type"], (module, response.headers["content-type"])


async def test_media_pages_the_local_folder_when_asked_and_health_names_the_backend(client_for, tmp_path: Path) -> None:
    client = await client_for("alice")
    media = tmp_path / "media"
    for name in ("a.mp4", "b/c.mp4", "b/notes.txt", "d.mkv"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(b"x" * 3)
    first = (await client.get("/api/media", params={"limit": 2})).json()
    assert first == {"files": [{"path": "a.mp4", "bytes": 3}, {"path": "b/c.mp4", "bytes": 3}], "truncated": True,
                     "next_after": "b/c.mp4"}  # fmt: skip
    rest = (await client.get("/api/media", params={"after": first["next_after"]})).json()
    assert rest == {"files": [{"path": "d.mkv", "bytes": 3}], "truncated": False}
    assert (await client.get("/api/media", params={"limit": 0})).status_code == 400
    assert "file_links" not in (await client.get("/api/config")).json()  # local files come through the API
    health = (await client.get("/api/extraction/health")).json()
    assert health["storage"] == {"backend": "local", "ok": True}
