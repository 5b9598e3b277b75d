"""The HTTP API in-process (Litestar's test client) on the real PostgreSQL and Redis: the contract of API.md for
clips, errors and auth. Workers are not running here: these tests are about what the API appends, or does not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from runtime.bootstrap import web_app
from domain.clip import Complete, Fail, HandBack, Start
from usecases.clips import handle
from usecases.services import utcnow
from runtime.settings import Settings
from tests.projected import metrics_projected



@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "games").mkdir(parents=True)
    (root / "games" / "match.mp4").write_bytes(b"stand-in; the API only checks that it is a file")
    return root


@pytest.fixture
def client_factory(app_client, media: Path):  # noqa: ANN001, ANN201 - the media root holds games/match.mp4
    return app_client


async def event_count(pool: asyncpg.Pool, project: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM events WHERE project_id = $1", project)


CLIP = {"source": "games/match.mp4", "start": 300.0, "end": 310.0}



async def test_register_is_idempotent_and_conflicts_on_other_fields(client_factory, pool, ids) -> None:
    client = await client_factory()
    project, clip = ids.project(), ids.clip()
    url = f"/api/clips/projects/{project}/clips"
    first = await client.post(url, json={"clip_id": clip, **CLIP, "name": "Brilliant Pass Run Cross"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "pending" and body["attempt"] == 1 and body["max_attempts"] == 3
    assert body["file_url"] is None and body["slow"] is False and body["version"] == 1
    again = await client.post(url, json={"clip_id": clip, **CLIP, "name": "Brilliant Pass Run Cross"})
    assert again.status_code == 200 and again.json()["version"] == 1
    other = await client.post(url, json={"clip_id": clip, **CLIP, "end": 311.0})
    assert other.status_code == 409 and "other fields" in other.json()["detail"]
    generated = await client.post(url, json=CLIP)
    assert generated.status_code == 201 and generated.json()["clip_id"]
    assert await event_count(pool, project) == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**CLIP, "source": "games/missing.mp4"}, "is not a video file in the media folder"),
        ({**CLIP, "source": "../../etc/passwd"}, "is not a video file in the media folder"),
        ({**CLIP, "source": "games"}, "is not a video file in the media folder"),
        ({**CLIP, "start": 10.0, "end": 10.0}, "0 <= start < end"),
        ({**CLIP, "start": -1.0}, "0 <= start < end"),
        ({**CLIP, "start": 0.0, "end": 4000.0}, "longest clip"),
        ({**CLIP, "start": "soon"}, "Validation failed"),
        ({**CLIP, "mode": "fast"}, "Validation failed"),
        ({**CLIP, "clip_id": "has space"}, "[A-Za-z0-9_-]{1,64}"),
        ({**CLIP, "surprise": 1}, "Validation failed"),
        ({**CLIP, "name": "nul\u0000byte"}, "without NUL"),
        ({**CLIP, "source": "games/" + "x" * 300 + ".mp4"}, "is not a video file in the media folder"),
    ],
)
async def test_bad_input_is_400_with_a_clear_detail_and_appends_nothing(client_factory, pool, ids, body, words) -> None:
    client = await client_factory()
    project = ids.project()
    response = await client.post(f"/api/clips/projects/{project}/clips", json=body)
    assert response.status_code == 400, response.text
    assert words in response.text and response.json()["status_code"] == 400
    assert await event_count(pool, project) == 0


async def test_malformed_json_and_bad_project_ids_are_400(client_factory) -> None:
    client = await client_factory()
    response = await client.post("/api/clips/projects/p1/clips", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert (await client.get("/api/clips/projects/bad%20id/clips")).status_code == 400


async def test_someone_elses_project_is_404_and_untouched(client_factory, pool, ids) -> None:
    alice, bob = await client_factory("alice"), await client_factory("bob")
    project, clip = ids.project(), ids.clip()
    assert (await alice.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})).status_code == 201
    before = await event_count(pool, project)
    for response in [
        await bob.post(f"/api/clips/projects/{project}/clips", json={"clip_id": ids.clip(), **CLIP}),
        await bob.get(f"/api/clips/projects/{project}/clips"),
        await bob.get(f"/api/clips/projects/{project}/clips/{clip}"),
        await bob.get(f"/api/clips/projects/{project}/clips/{clip}/events"),
        await bob.post(f"/api/clips/projects/{project}/clips/{clip}/retry-extraction"),
    ]:
        assert response.status_code == 404, response.text
        assert "not found" in response.json()["detail"]
    assert await event_count(pool, project) == before


async def test_missing_or_bad_token_is_401(client_factory) -> None:
    client = await client_factory()
    del client.headers["Authorization"]
    assert (await client.get("/api/clips/projects/p1/clips")).status_code == 401
    client.headers["Authorization"] = "Bearer nope"
    response = await client.get("/api/clips/projects/p1/clips")
    assert response.status_code == 401 and response.json()["detail"]
    assert (await client.get("/api/extraction/health")).status_code == 200


async def test_listing_a_project_never_appends(client_factory, pool, ids) -> None:
    client = await client_factory()
    project = ids.project()
    for n in range(3):
        await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": f"c{n}", **CLIP})
    before = await event_count(pool, project)
    for _ in range(5):
        listed = await client.get(f"/api/clips/projects/{project}/clips")
        assert [c["clip_id"] for c in listed.json()] == ["c0", "c1", "c2"]
    assert await event_count(pool, project) == before


async def test_retry_rules(client_factory, pool, ids) -> None:
    client = await client_factory(slow_after=3600.0)
    project, clip = ids.project(), ids.clip()
    base = f"/api/clips/projects/{project}/clips/{clip}"
    await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})
    pending = await client.post(base + "/retry-extraction")
    assert pending.status_code == 409 and "not yet slow" in pending.json()["detail"]

    ctx = lambda: Settings(database_url="x").context(utcnow())  # noqa: E731
    await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), ctx)
    await handle(pool, project, clip, Fail(run=1, attempt=1, code="not_a_video", message="boom", retryable=False), ctx)
    failed = (await client.get(base)).json()
    assert failed["status"] == "failed" and failed["retry_eligible"] is True
    assert failed["last_error"] == {"code": "not_a_video", "message": "boom", "retryable": False}

    first = await client.post(base + "/retry-extraction")
    assert first.status_code == 202 and first.json()["run"] == 2 and first.json()["status"] == "pending"
    double = await client.post(base + "/retry-extraction")
    assert double.status_code == 200 and double.json()["version"] == first.json()["version"]
    reasons = [e["data"].get("reason") for e in (await client.get(base + "/events")).json()]
    assert reasons.count("manual_retry") == 1

    await handle(pool, project, clip, Start(run=2, attempt=1, worker_id="w"), ctx)
    output = Complete(run=2, attempt=1, bytes=10, duration_seconds=10, elapsed_seconds=0.1, output="nowhere.mp4")
    await handle(pool, project, clip, output, ctx)
    completed = await client.post(base + "/retry-extraction")
    assert completed.status_code == 409 and "already extracted" in completed.json()["detail"]
    missing_file = await client.get(base + "/file")
    assert missing_file.status_code == 404 and "missing" in missing_file.json()["detail"]


async def test_a_slow_running_clip_can_be_retried_by_a_person(client_factory, pool, ids) -> None:
    client = await client_factory(slow_after=0.2)
    project, clip = ids.project(), ids.clip()
    base = f"/api/clips/projects/{project}/clips/{clip}"
    await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})
    ctx = lambda: Settings(database_url="x").context(utcnow() - timedelta(seconds=1))  # noqa: E731
    await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), ctx)
    running = (await client.get(base)).json()
    assert running["status"] == "running" and running["slow"] is True and running["retry_eligible"] is True
    retried = await client.post(base + "/retry-extraction")
    assert retried.status_code == 202 and retried.json()["run"] == 2
    types = [(e["type"], e["data"].get("detected_by")) for e in (await client.get(base + "/events")).json()]
    assert types[-2:] == [("extraction.timed_out", "user"), ("extraction.requested", None)]
    file = await client.get(base + "/file")
    assert file.status_code == 409


async def test_unknown_clip_is_404(client_factory, ids) -> None:
    client = await client_factory()
    project = ids.project()
    await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": "c1", **CLIP})
    assert (await client.get(f"/api/clips/projects/{project}/clips/nope")).status_code == 404


async def test_health_metrics_and_schema(client_factory) -> None:
    client = await client_factory()
    health = await client.get("/api/extraction/health")
    assert health.status_code == 200
    body = health.json()
    assert body["database"]["ok"] is True and body["redis"]["ok"] is True
    assert set(body) >= {"status", "workers", "queue", "reactor", "rates"}
    assert body["status"] in ("ok", "degraded")
    metrics = (await client.get("/metrics")).text
    for name in ("cliplog_extraction_attempts_total", "cliplog_extraction_duration_seconds_bucket", "cliplog_clips",
                 "cliplog_feed_subscribers", "cliplog_reactor_lag_events"):
        assert name in metrics
    schema = (await client.get("/schema")).json()
    assert schema["openapi"].startswith("3.") and "/api/clips/projects/{project_id}/clips" in schema["paths"]
    assert "ClipView" in msgspec.json.encode(schema).decode()


async def test_priority_is_part_of_the_registration_and_health_counts_what_waits_for_admission(
    client_factory, ids
) -> None:
    """No worker runs here, so every registered attempt waits for admission: health and /metrics count them per
    priority (the difference from before, other tests' clips wait too)."""
    client = await client_factory()

    async def waiting() -> tuple[dict, dict[str, float]]:
        dispatch = (await client.get("/api/extraction/health")).json()["dispatch"]
        lines = (await client.get("/metrics")).text.splitlines()
        gauges = dict(line.rsplit(" ", 1) for line in lines if line.startswith("cliplog_dispatch_waiting{"))
        return dispatch, {k.split('"')[1]: float(v) for k, v in gauges.items()}

    before, gauges_before = await waiting()
    project = ids.project()
    url = f"/api/clips/projects/{project}/clips"
    batch = await client.post(url, json={"clip_id": "bulk", **CLIP, "priority": "batch"})
    assert batch.status_code == 201 and batch.json()["priority"] == "batch"
    plain = await client.post(url, json={"clip_id": "plain", **CLIP})
    assert plain.status_code == 201 and plain.json()["priority"] == "interactive"
    assert (await client.post(url, json={"clip_id": "bulk", **CLIP, "priority": "batch"})).status_code == 200
    assert (await client.post(url, json={"clip_id": "bulk", **CLIP})).status_code == 409  # other fields
    bad = await client.post(url, json={"clip_id": "x", **CLIP, "priority": "urgent"})
    assert bad.status_code == 400 and "priority" in bad.text
    after, gauges_after = await waiting()
    assert after["waiting"]["batch"] - before["waiting"]["batch"] == 1
    assert after["waiting"]["interactive"] - before["waiting"]["interactive"] == 1
    assert gauges_after["batch"] - gauges_before["batch"] == 1
    assert gauges_after["interactive"] - gauges_before["interactive"] == 1
    assert after["oldest_wait_seconds"] >= 0
    events = (await client.get(f"{url}/bulk/events")).json()
    assert events[0]["data"]["priority"] == "batch"


async def test_database_down_gives_503_not_500(media: Path, tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere", redis_url="redis://127.0.0.1:1/0",
        media_root=media, output_root=tmp_path / "clips",
    )
    async with AsyncTestClient(app=web_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer whatever"
        response = await client.get("/api/clips/projects/p1/clips")
        assert response.status_code == 503 and "unavailable" in response.json()["detail"]
        health = await client.get("/api/extraction/health")
        assert health.status_code == 503 and health.json()["status"] == "down"


async def test_hostile_cursors_and_ranges_are_clear_errors(client_factory, ids) -> None:
    import uuid

    from eventlog import cursor

    client = await client_factory()
    huge = cursor.encode(uuid.UUID(int=0), 2**64 - 1, 0)  # a position past PostgreSQL's bigint
    for after in (huge, "!!!", "x" * 5000):
        response = await client.get("/api/events", params={"after": after})
        assert response.status_code == 400, (after[:20], response.text)
    project = ids.project()
    await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": "c1", **CLIP})
    response = await client.get(f"/api/clips/projects/{project}/clips/c1/file", headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert response.status_code == 409  # not extracted yet; the Range header is not even parsed


async def test_the_duration_histogram_counts_what_the_log_holds(client_factory, pool, ids) -> None:
    client = await client_factory()
    project, clip = ids.project(), ids.clip()
    ctx = lambda: Settings(database_url="x").context(utcnow())  # noqa: E731
    await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})
    await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), ctx)
    done = Complete(run=1, attempt=1, bytes=1, duration_seconds=10, elapsed_seconds=0.05, output="x.mp4")
    await handle(pool, project, clip, done, ctx)
    await metrics_projected(pool)
    durations = [r["d"] for r in await pool.fetch(
        "SELECT (data->>'elapsed_seconds')::float8 AS d FROM events WHERE type = 'extraction.completed'"
    )]
    lines = dict(
        line.rsplit(" ", 1) for line in (await client.get("/metrics")).text.splitlines() if not line.startswith("#")
    )
    assert float(lines['cliplog_extraction_duration_seconds_bucket{le="0.1"}']) == sum(d <= 0.1 for d in durations)
    assert float(lines['cliplog_extraction_duration_seconds_bucket{le="600"}']) == sum(d <= 600 for d in durations)
    assert float(lines["cliplog_extraction_duration_seconds_count"]) == len(durations)


async def test_metrics_are_prometheus_text_a_scraper_parses(client_factory) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client = await client_factory()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families == {
        "cliplog_extraction_attempts": "counter",
        "cliplog_extraction_duration_seconds": "histogram",
        "cliplog_clips": "gauge",
        "cliplog_feed_subscribers": "gauge",
        "cliplog_reactor_lag_events": "gauge",
        "cliplog_dispatch_waiting": "gauge",
        "cliplog_dispatch_oldest_wait_seconds": "gauge",
    }
    openmetrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.text.endswith("# EOF\n")


async def test_hand_backs_are_not_counted_as_failed_attempts(client_factory, pool, ids) -> None:
    client = await client_factory()
    ctx = lambda: Settings(database_url="x").context(utcnow())  # noqa: E731

    async def failed_counts() -> tuple[int, float]:
        health = (await client.get("/api/extraction/health")).json()
        lines = dict(
            line.rsplit(" ", 1) for line in (await client.get("/metrics")).text.splitlines() if not line.startswith("#")
        )
        return health["rates"]["failed"], float(lines['cliplog_extraction_attempts_total{outcome="failed"}'])

    await metrics_projected(pool)
    before = await failed_counts()
    project = ids.project()
    for clip in ("deployed", "broken"):
        await client.post(f"/api/clips/projects/{project}/clips", json={"clip_id": clip, **CLIP})
        await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), ctx)
    await handle(pool, project, "deployed", HandBack(run=1, attempt=1), ctx)  # a deploy
    await handle(pool, project, "broken", Fail(run=1, attempt=1, code="ffmpeg_exit", message="x", retryable=True), ctx)
    assert await pool.fetchval(
        "SELECT count(*) FROM events WHERE project_id = $1 AND type = 'extraction.failed'", project
    ) == 2
    await metrics_projected(pool)
    after = await failed_counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # the real failure only


RACED = {"source": "a.mp4", "start": 1.0, "end": 2.0}  # a file of the `api_server`'s media root


@pytest.mark.parametrize("fields", [RACED, {**RACED, "end": 3.0}], ids=["same-fields", "other-fields"])
async def test_the_loser_of_a_race_for_a_new_projects_first_clip_gets_404(
    api_server, pool, ids, make_user, fields
) -> None:
    """User A's registering transaction has appended the project's first clip and claimed the project, and is held
    open; user B posts the same clip id to the real server. B's append waits for A's transaction (pg_blocking_pids
    shows it), which then commits: B must get 404 (someone else's project), not A's clip (200) nor 409, and append
    nothing."""
    import asyncio

    import httpx

    from domain.clip import Register
    from usecases.clips import claim_project

    project, clip = ids.project(), ids.clip()
    (winner_user, _), (_, loser_token) = await make_user(), await make_user()
    holding, release = asyncio.Event(), asyncio.Event()
    winner_pid: list[int] = []

    async def claim_and_hold(conn: asyncpg.Connection, _state: object) -> None:
        await claim_project(conn, project, winner_user)
        winner_pid.append(conn.get_server_pid())
        holding.set()
        await release.wait()

    ctx = lambda: Settings(database_url="x").context(utcnow())  # noqa: E731
    register = Register(source=RACED["source"], start=RACED["start"], end=RACED["end"])
    winner = asyncio.create_task(handle(pool, project, clip, register, ctx, after_append=claim_and_hold))
    headers = {"Authorization": f"Bearer {loser_token}"}
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=20) as loser:
        try:
            await asyncio.wait_for(holding.wait(), 10)
            url = f"/api/clips/projects/{project}/clips"
            posted = asyncio.create_task(loser.post(url, json={"clip_id": clip, **fields}))
            async with asyncio.timeout(10):  # the race happened: B's statement waits for A's open transaction
                while not await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", winner_pid[0]
                ):
                    await asyncio.sleep(0.01)
            assert not posted.done()
        finally:
            release.set()
        assert (await winner).appended
        response = await asyncio.wait_for(posted, 10)
    assert response.status_code == 404, response.text
    assert response.json() == {"status_code": 404, "detail": f"project {project!r} not found"}
    assert await event_count(pool, project) == 1
    assert await pool.fetchval("SELECT owner FROM projects WHERE project_id = $1", project) == winner_user
