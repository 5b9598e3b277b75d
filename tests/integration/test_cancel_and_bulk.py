"""Cancel, the bulk routes and the Idempotency-Key (API.md), in-process on the real PostgreSQL and Redis; the worker's
commands are sent through the use case (`usecases.clips.handle`), as a worker would. Cancel racing a completion is
made to happen: one side's transaction is held open (after_append) while the other one decides and appends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from domain.clip import Cancel, Complete, Context, Fail, Register, Start, TimeOut
from domain.errors import Conflict, StaleAttempt
from eventlog import store
from runtime.settings import Settings
from usecases import clips
from usecases.services import utcnow
from tests.projected import metrics_projected

CLIP = {"source": "games/match.mp4", "start": 300.0, "end": 310.0}


def context() -> Context:
    return Settings(database_url="x").context(utcnow())


@pytest.fixture
async def client(app_client, tmp_path: Path):  # noqa: ANN001, ANN201
    client = await app_client()
    (tmp_path / "media" / "games").mkdir(parents=True, exist_ok=True)
    (tmp_path / "media" / "games" / "match.mp4").write_bytes(b"stand-in; the API only checks that it is a file")
    return client


async def types(pool: asyncpg.Pool, project: str, clip: str) -> list[str]:
    return [e.type.removeprefix("extraction.") for e in await store.read_stream(pool, project, clip)]


async def make_clip(client, pool, project: str, clip: str, status: str) -> None:  # noqa: ANN001
    """A clip of `project` in `status`, through the API and the worker's commands."""
    response = await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})
    assert response.status_code == 201, response.text
    if status == "pending":
        return
    await clips.handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), context)
    match status:
        case "running":
            pass
        case "retrying":
            await clips.handle(pool, project, clip, TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"), context)
        case "completed":
            done = Complete(run=1, attempt=1, bytes=10, duration_seconds=10, elapsed_seconds=0.1, output="x.mp4")
            await clips.handle(pool, project, clip, done, context)
        case "failed":
            fail = Fail(run=1, attempt=1, code="not_a_video", message="boom", retryable=False)
            await clips.handle(pool, project, clip, fail, context)
        case "cancelled":
            await clips.handle(pool, project, clip, Cancel(), context)
    assert (await client.get(f"/api/clips/projects/{project}/clips/{clip}")).json()["status"] == status


@pytest.mark.parametrize("status", ["pending", "retrying", "running"])
async def test_cancel_in_each_cancellable_state_then_a_double_cancel_then_a_retry(client, pool, ids, status) -> None:
    project, clip = ids.project(), ids.clip()
    base = f"/api/clips/projects/{project}/clips/{clip}"
    await make_clip(client, pool, project, clip, status)
    before = await types(pool, project, clip)

    first = await client.post(base + "/cancel")
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "cancelled" and body["retry_eligible"] is True and body["next_retry_at"] is None
    history = (await client.get(base + "/events")).json()
    assert [e["type"] for e in history][len(before):] == ["extraction.cancelled"]
    cancelled = history[-1]
    assert cancelled["clip_status"] == "cancelled"
    assert cancelled["data"]["by"] == "user" and cancelled["data"]["run"] == body["run"]
    assert cancelled["data"]["attempt"] == body["attempt"] and cancelled["data"]["elapsed_seconds"] >= 0

    again = await client.post(base + "/cancel")
    assert again.status_code == 200 and again.json()["version"] == body["version"]
    assert len(await types(pool, project, clip)) == len(before) + 1

    # The cancelled attempt's worker is stale whatever it reports; nothing is appended for it.
    with pytest.raises(StaleAttempt):
        await clips.handle(pool, project, clip, Start(run=body["run"], attempt=body["attempt"], worker_id="w"), context)
    with pytest.raises(StaleAttempt):
        await clips.handle(pool, project, clip, TimeOut(run=1, attempt=body["attempt"], detected_by="reaper", reason="lease"), context)

    retried = await client.post(base + "/retry-extraction")
    assert retried.status_code == 202 and retried.json()["status"] == "pending" and retried.json()["run"] == 2
    assert (await types(pool, project, clip))[-2:] == ["cancelled", "requested"]


@pytest.mark.parametrize(("status", "words"), [("completed", "already extracted"), ("failed", "is failed")])
async def test_cancel_of_a_completed_or_failed_clip_is_409_and_appends_nothing(client, pool, ids, status, words) -> None:
    project, clip = ids.project(), ids.clip()
    await make_clip(client, pool, project, clip, status)
    before = await types(pool, project, clip)
    response = await client.post(f"/api/clips/projects/{project}/clips/{clip}/cancel")
    assert response.status_code == 409 and words in response.json()["detail"], response.text
    assert await types(pool, project, clip) == before


async def test_cancel_of_someone_elses_or_an_unknown_clip_is_404(client, app_client, pool, ids) -> None:
    project, clip = ids.project(), ids.clip()
    await make_clip(client, pool, project, clip, "pending")
    bob = await app_client("bob")
    for response in (
        await bob.post(f"/api/clips/projects/{project}/clips/{clip}/cancel"),
        await bob.post(f"/api/clips/projects/{project}/cancel-all"),
        await bob.post(f"/api/clips/projects/{project}/retry-failed"),
        await client.post(f"/api/clips/projects/{project}/clips/nope/cancel"),
    ):
        assert response.status_code == 404, response.text
    assert await types(pool, project, clip) == ["requested"]


STATES = ["pending", "running", "retrying", "completed", "failed", "cancelled"]


async def project_in_every_state(client, pool, ids) -> str:  # noqa: ANN001
    project = ids.project()
    for status in STATES:
        await make_clip(client, pool, project, status, status)
    return project


async def test_cancel_all_cancels_what_is_cancellable_and_says_why_it_skipped_the_rest(client, pool, ids) -> None:
    project = await project_in_every_state(client, pool, ids)
    response = await client.post(f"/api/clips/projects/{project}/cancel-all")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] == 3
    assert body["skipped"] == [
        {"clip_id": "completed", "reason": "the clip is completed"},
        {"clip_id": "failed", "reason": "the clip is failed"},
        {"clip_id": "cancelled", "reason": "the clip is cancelled"},
    ]
    listed = {c["clip_id"]: c["status"] for c in (await client.get(f"/api/clips/projects/{project}/clips")).json()}
    assert listed == {**{s: "cancelled" for s in ("pending", "running", "retrying", "cancelled")},
                      "completed": "completed", "failed": "failed"}
    for clip in ("pending", "running", "retrying"):
        assert (await types(pool, project, clip))[-1] == "cancelled"
    again = (await client.post(f"/api/clips/projects/{project}/cancel-all")).json()
    assert again["changed"] == 0 and len(again["skipped"]) == 6


async def test_cancel_all_with_a_status_filter_and_a_status_it_refuses(client, pool, ids) -> None:
    project = await project_in_every_state(client, pool, ids)
    url = f"/api/clips/projects/{project}/cancel-all"
    running_only = (await client.post(url, json={"status": ["running"]})).json()
    assert running_only["changed"] == 1
    assert {s["clip_id"] for s in running_only["skipped"]} == set(STATES) - {"running"}
    assert (await types(pool, project, "pending"))[-1] == "requested"
    refused = (await client.post(url, json={"status": ["completed"]})).json()
    assert refused["changed"] == 0
    reasons = {s["clip_id"]: s["reason"] for s in refused["skipped"]}
    assert "already extracted" in reasons["completed"] and reasons["pending"] == "the clip is pending"
    bad = await client.post(url, json={"status": ["exploded"]})
    assert bad.status_code == 400 and "Validation failed" in bad.text
    assert (await client.post(url, json={"surprise": 1})).status_code == 400
    assert (await client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})).status_code == 400


async def test_retry_failed_retries_the_failed_clips_only_unless_asked_for_more(client, pool, ids) -> None:
    project = await project_in_every_state(client, pool, ids)
    url = f"/api/clips/projects/{project}/retry-failed"
    response = await client.post(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] == 1 and {s["clip_id"] for s in body["skipped"]} == set(STATES) - {"failed"}
    assert (await types(pool, project, "failed"))[-1] == "requested"
    failed = (await client.get(f"/api/clips/projects/{project}/clips/failed")).json()
    assert failed["status"] == "pending" and failed["run"] == 2
    # The cancelled clip too, when asked; a second call finds nothing left to retry.
    more = (await client.post(url, json={"status": ["failed", "cancelled"]})).json()
    assert more["changed"] == 1
    assert {s["clip_id"]: s["reason"] for s in more["skipped"]}["failed"] == "the clip is pending"
    assert (await client.get(f"/api/clips/projects/{project}/clips/cancelled")).json()["run"] == 2
    assert (await client.post(url)).json()["changed"] == 0


async def test_an_idempotency_key_reused_gives_one_clip(client, pool, ids) -> None:
    project = ids.project()
    url = f"/api/clips/projects/{project}/clips"
    headers = {"Idempotency-Key": "add-clip-7f3a"}
    first = await client.post(url, json=CLIP, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post(url, json=CLIP, headers=headers)
    assert again.status_code == 200 and again.json()["clip_id"] == first.json()["clip_id"]
    assert again.json()["version"] == first.json()["version"]
    assert len((await client.get(url)).json()) == 1
    assert await pool.fetchval("SELECT clip_id FROM idempotency_keys WHERE project_id = $1", project) == first.json()["clip_id"]

    other_body = await client.post(url, json={**CLIP, "end": 311.0}, headers=headers)
    assert other_body.status_code == 409 and "another body" in other_body.json()["detail"]
    assert len((await client.get(url)).json()) == 1
    # Another key is another clip; no key, another one again.
    assert (await client.post(url, json=CLIP, headers={"Idempotency-Key": "other"})).status_code == 201
    assert (await client.post(url, json=CLIP)).status_code == 201
    assert len((await client.get(url)).json()) == 3
    for bad in ("", "x" * 256, "tab\there", "ключ".encode()):
        response = await client.post(url, json=CLIP, headers={"Idempotency-Key": bad})
        assert response.status_code == 400 and "Idempotency-Key" in response.json()["detail"], (bad, response.text)
    assert len((await client.get(url)).json()) == 3


async def test_an_idempotency_key_of_someone_elses_project_gives_bob_404_not_their_clip(client, app_client, ids) -> None:
    """The key's lookup is the project's owner's: another user who sends the same key (with the same body, or
    another) gets the 404 any request into a project of someone else's gets, never the owner's clip or a hint that
    the key was used."""
    project = ids.project()
    url = f"/api/clips/projects/{project}/clips"
    headers = {"Idempotency-Key": "add-clip-7f3a"}
    first = await client.post(url, json=CLIP, headers=headers)
    assert first.status_code == 201, first.text
    bob = await app_client("bob")
    for body in (CLIP, {**CLIP, "end": 311.0}):
        response = await bob.post(url, json=body, headers=headers)
        assert response.status_code == 404, response.text
        assert first.json()["clip_id"] not in response.text
    assert len((await client.get(url)).json()) == 1


async def test_two_requests_racing_with_one_idempotency_key_make_one_clip(pool, ids, monkeypatch) -> None:
    """Both miss the key's lookup and register a clip each; the second one's key insert waits for the first one's
    transaction, finds the key taken, rolls its clip back and answers the first one's clip."""
    project = ids.project()
    looked_up = 0
    both_looked = asyncio.Event()
    real_lookup = clips._clip_of_key

    async def lookup_then_wait_for_the_other(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal looked_up
        found = await real_lookup(*args, **kwargs)
        looked_up += 1
        if looked_up == 2:
            both_looked.set()
        if looked_up <= 2:
            await asyncio.wait_for(both_looked.wait(), 10)  # neither registers before both have missed the key
        return found

    monkeypatch.setattr(clips, "_clip_of_key", lookup_then_wait_for_the_other)
    command = Register(source="games/match.mp4", start=300.0, end=310.0)
    answers = await asyncio.gather(
        *(
            clips.register_once(pool, project, "double-submit", "same-body", new_id, command, context, user="alice")
            for new_id in ("one", "two")
        )
    )
    assert looked_up == 3  # both missed the key; the loser looked again after its registration was rolled back
    assert sorted(len(a.appended) for a in answers) == [0, 1]
    assert answers[0].state.clip_id == answers[1].state.clip_id
    assert await pool.fetchval("SELECT count(*) FROM clips WHERE project_id = $1", project) == 1
    assert await pool.fetchval("SELECT count(*) FROM events WHERE project_id = $1", project) == 1


@pytest.mark.parametrize("held", ["completion", "cancel"])
async def test_cancel_racing_a_completion_leaves_exactly_one_outcome(client, pool, ids, held) -> None:
    """The `held` side appends first and keeps its transaction open while the other one decides on the same running
    state and appends: that one waits on the stream's version, then decides again on the committed state and is
    refused (a completion is stale, a cancel conflicts)."""
    project, clip = ids.project(), ids.clip()
    await make_clip(client, pool, project, clip, "running")
    done = Complete(run=1, attempt=1, bytes=10, duration_seconds=10, elapsed_seconds=0.1, output="x.mp4")
    inside = asyncio.Event()
    release = asyncio.Event()
    decisions = {"completion": 0, "cancel": 0}

    def counted(side: str):  # noqa: ANN202
        def make() -> Context:
            decisions[side] += 1
            return context()

        return make

    async def hold(conn, state) -> None:  # noqa: ANN001
        inside.set()
        await asyncio.wait_for(release.wait(), 10)

    other = "cancel" if held == "completion" else "completion"
    commands = {"completion": done, "cancel": Cancel()}
    first = asyncio.create_task(
        clips.handle(pool, project, clip, commands[held], counted(held), after_append=hold)
    )
    await asyncio.wait_for(inside.wait(), 10)
    second = asyncio.create_task(clips.handle(pool, project, clip, commands[other], counted(other)))
    # The other side has decided on the running state and is blocked in its append on the held transaction.
    for _ in range(200):  # poll PostgreSQL until the other side's insert waits on the held transaction's lock
        blocked = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if decisions[other] == 1 and blocked:
            break
        await asyncio.sleep(0.05)
    assert decisions[other] == 1 and blocked >= 1 and not second.done()
    release.set()
    await first
    with pytest.raises(StaleAttempt if other == "completion" else Conflict):
        await second
    assert decisions[other] == 2  # it decided again on the state the held side committed
    endings = [t for t in await types(pool, project, clip) if t in ("completed", "failed", "timed_out", "cancelled")]
    assert endings == ["completed" if held == "completion" else "cancelled"]
    clip_now = (await client.get(f"/api/clips/projects/{project}/clips/{clip}")).json()
    assert clip_now["status"] == endings[0]


async def test_metrics_count_cancelled_clips_and_attempts(client, pool, ids) -> None:
    project = ids.project()
    await make_clip(client, pool, project, "c", "cancelled")
    await metrics_projected(pool)  # asynchronous: its follower runs in the app
    lines = dict(
        line.rsplit(" ", 1) for line in (await client.get("/metrics")).text.splitlines() if not line.startswith("#")
    )
    assert float(lines['cliplog_clips{status="cancelled"}']) == await pool.fetchval(
        "SELECT count(*) FROM clips WHERE status = 'cancelled'"
    ) >= 1
    assert float(lines['cliplog_extraction_attempts_total{outcome="cancelled"}']) == await pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'extraction.cancelled'"
    )


@pytest.mark.parametrize(
    "request_body",
    [{}, {"content": b"", "headers": {"Content-Type": "application/json"}}, {"json": None}, {"json": {}}],
    ids=["no-body", "empty-json-body", "null", "empty-object"],
)
async def test_the_bulk_routes_body_is_optional(client, pool, ids, request_body) -> None:
    project = ids.project()
    await make_clip(client, pool, project, "failed", "failed")
    response = await client.post(f"/api/clips/projects/{project}/retry-failed", **request_body)
    assert response.status_code == 200, response.text
    assert response.json() == {"changed": 1, "skipped": []}
