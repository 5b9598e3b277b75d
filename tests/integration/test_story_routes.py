"""The UI's two debugging routes on real histories (written by the service's own use cases) in a real log:
`GET .../clips/{c}/story` (after each event the state and the reason, from domain/story.py: the same words
`cliplog replay` prints) and `GET .../clips/{c}/export` (the clip's export file, as `cliplog export` writes it)."""

from __future__ import annotations

from typing import Awaitable, Callable

import httpx
import msgspec

from domain.clip import Cancel, Register
from eventlog import export, store
from eventlog.store import StoredEvent
from projections.replay import replay
from tests.integration.test_replay_tools import EXPECTED_BECAUSE, Clock, make_histories
from tests.inprocess import InProcessServer
from usecases.clips import handle, register

MakeUser = Callable[[], Awaitable[tuple[str, str]]]


def client(server: InProcessServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def test_the_story_gives_each_state_and_the_reason_the_domain_gives(
    api_server: InProcessServer, pool, ids, make_user: MakeUser
):
    user, token = await make_user()
    project = ids.project()
    await make_histories(pool, project, user=user)
    async with client(api_server, token) as http:
        for clip, expected in EXPECTED_BECAUSE.items():
            response = await http.get(f"/api/clips/projects/{project}/clips/{clip}/story")
            assert response.status_code == 200, response.text
            story = response.json()
            events = await store.read_stream(pool, project, clip)
            assert [s["because"] for s in story] == expected
            assert [s["position"] for s in story] == [e.position for e in events]
            assert [s["status"] for s in story] == [e.clip_status for e in events]  # what the service recorded
            assert [s["reason"] for s in story] == [step.why.text for step in replay(events)]
            clip_view = (await http.get(f"/api/clips/projects/{project}/clips/{clip}")).json()
            assert story[-1]["status"] == clip_view["status"]
            assert (story[-1]["attempt"], story[-1]["max_attempts"]) == (clip_view["attempt"], clip_view["max_attempts"])
        budget = (await http.get(f"/api/clips/projects/{project}/clips/budget/story")).json()
    assert "budget" in budget[-1]["reason"] and budget[-1]["status"] == "failed"
    assert budget[3]["next_attempt_at"] is not None and budget[3]["status"] == "retrying"  # the backoff's wait


async def test_the_story_of_a_cancelled_clip_says_a_person_stopped_it(
    api_server: InProcessServer, pool, ids, make_user: MakeUser
):
    user, token = await make_user()
    project, clip = ids.project(), ids.clip()
    ctx = Clock().context()
    await register(pool, project, clip, Register(source="games/match.mp4", start=1.0, end=3.0), ctx, user=user)
    await handle(pool, project, clip, Cancel(), ctx)
    async with client(api_server, token) as http:
        story = (await http.get(f"/api/clips/projects/{project}/clips/{clip}/story")).json()
    assert [s["because"] for s in story] == ["registered", "stopped_by_person"]
    assert story[-1]["status"] == "cancelled" and story[-1]["reason"].startswith("cancelled by the user")


async def test_download_history_is_the_clips_export_file(api_server: InProcessServer, pool, ids, make_user: MakeUser):
    user, token = await make_user()
    project = ids.project()
    await make_histories(pool, project, user=user)
    async with client(api_server, token) as http:
        response = await http.get(f"/api/clips/projects/{project}/clips/budget/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"] == f'attachment; filename="{project}-budget.cliplog.jsonl"'
    first, *lines = response.content.splitlines()
    header = export.read_header(first)
    assert header.selection == export.Selection(project_id=project, clip_id="budget")
    assert header.owners == {project: user}
    stored = await store.read_stream(pool, project, "budget")
    assert header.count == len(stored) == len(lines)
    assert [msgspec.json.decode(line, type=StoredEvent) for line in lines] == stored


async def test_another_users_clip_has_no_story_and_no_export(api_server: InProcessServer, pool, ids, make_user: MakeUser):
    owner, _ = await make_user()
    project = ids.project()
    await make_histories(pool, project, user=owner)
    _, token = await make_user()
    async with client(api_server, token) as http:
        for route in ("story", "export"):
            response = await http.get(f"/api/clips/projects/{project}/clips/budget/{route}")
            assert response.status_code == 404 and response.json()["detail"]
            response = await http.get(f"/api/clips/projects/{project}/clips/bad%20id/{route}")
            assert response.status_code in (400, 404) and response.json()["detail"]
