"""HTTP as clients, browsers and proxies expect it (issue 10), with httpx and websockets against the real app under
uvicorn (`api_server`, and a second one with CORS and tight socket limits): authentication before the body, file
ranges (416) and conditional requests, HEAD on every GET route, compression, CORS, the WebSocket's Origin check,
revoked tokens on open sockets, the per-token socket limit, the token commands, and what /schema declares."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from typing import Awaitable, Callable, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from api.auth import hash_token, revoke_token
from tests.clip_support import completed_clip
from tests.feed_support import close_code, open_socket, receive_events, register, ws_url
from tests.inprocess import InProcessServer

MakeUser = Callable[[], Awaitable[tuple[str, str]]]
ORIGIN = "https://app.example"
CONTENT = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def tuned_server(database_url: str, api_env) -> Iterator[InProcessServer]:  # noqa: ANN001
    env = api_env(
        database_url, CLIPLOG_CORS_ORIGINS=ORIGIN, CLIPLOG_WS_PER_TOKEN="2", CLIPLOG_TOKEN_CHECK_INTERVAL="0.2"
    )
    server = InProcessServer(env).start()
    try:
        yield server
    finally:
        server.stop()


def client(server: InProcessServer, token: str | None = None, **headers: str) -> httpx.AsyncClient:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30)


async def a_file(api_server: InProcessServer, pool, ids, make_user: MakeUser) -> tuple[str, str]:  # noqa: ANN001
    user, token = await make_user()
    url = await completed_clip(pool, api_server.settings.output_root, user, ids.project(), ids.clip(), CONTENT)
    return url, token


# Authentication first ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"[]", "application/json"), (b"x" * 20_000_000, "application/json"),
     (b"source=a", "application/x-www-form-urlencoded")],
)
async def test_a_bad_token_is_401_whatever_the_body(api_server, content: bytes, content_type: str):
    async with client(api_server, "nope") as http:
        response = await http.post("/api/clips/projects/p1/clips", content=content, headers={"Content-Type": content_type})
        assert response.status_code == 401, response.text
        assert response.json()["status_code"] == 401 and response.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/api/clips/projects/bad%20id!/clips")).status_code == 401
        assert (await http.get("/api/events", params={"limit": "0"})).status_code == 401


# Files ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("range_header", ["bytes=5-2", "bytes=9999999-", "bytes=-0", "bytes=10240-"])
async def test_an_unsatisfiable_range_is_416_with_the_size(api_server, pool, ids, make_user, range_header: str):
    url, token = await a_file(api_server, pool, ids, make_user)
    async with client(api_server, token) as http:
        response = await http.get(url, headers={"Range": range_header})
    assert response.status_code == 416, response.text
    assert response.headers["content-range"] == "bytes */10240"
    assert response.json()["status_code"] == 416 and "10240 bytes" in response.json()["detail"]


async def test_ranges_validators_and_conditional_requests(api_server, pool, ids, make_user):
    url, token = await a_file(api_server, pool, ids, make_user)
    async with client(api_server, token) as http:
        whole = await http.get(url)
        assert whole.status_code == 200 and whole.content == CONTENT
        etag, modified = whole.headers["etag"], whole.headers["last-modified"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        assert whole.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert whole.headers["accept-ranges"] == "bytes"

        part = await http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == CONTENT[100:200]
        assert part.headers["content-range"] == "bytes 100-199/10240" and part.headers["etag"] == etag
        suffix = await http.get(url, headers={"Range": "bytes=-10"})
        assert suffix.status_code == 206 and suffix.content == CONTENT[-10:]

        for conditional in ({"If-None-Match": etag}, {"If-None-Match": f'"other", W/{etag}'},
                            {"If-Modified-Since": modified}):
            cached = await http.get(url, headers=conditional)
            assert cached.status_code == 304 and cached.content == b"", conditional
            assert cached.headers["etag"] == etag and cached.headers["cache-control"].startswith("private")
        assert (await http.get(url, headers={"If-None-Match": '"other"'})).status_code == 200
        stale = await http.get(url, headers={"If-None-Match": '"other"', "If-Modified-Since": modified})
        assert stale.status_code == 200  # If-None-Match decides when present

        for if_range, status in ((etag, 206), (modified, 206), ('"other"', 200), ("W/" + etag, 200)):
            answer = await http.get(url, headers={"Range": "bytes=0-9", "If-Range": if_range})
            assert answer.status_code == status, if_range
            assert answer.content == (CONTENT[:10] if status == 206 else CONTENT)

        head = await http.head(url, headers={"Range": "bytes=0-9"})
        assert head.status_code == 206 and head.content == b"" and head.headers["content-length"] == "10"
        assert (await http.head(url)).headers["content-length"] == "10240"


async def test_files_are_never_compressed(api_server, pool, ids, make_user):
    url, token = await a_file(api_server, pool, ids, make_user)
    async with client(api_server, token, **{"Accept-Encoding": "br, gzip"}) as http:
        for headers in ({}, {"Range": "bytes=0-4999"}):
            response = await http.get(url, headers=headers)
            assert "content-encoding" not in response.headers, headers
            assert response.content == CONTENT[: len(response.content)] and len(response.content) >= 5000


# HEAD, compression, UI files ------------------------------------------------------------------------------------


async def test_head_answers_every_get_route_with_the_get_headers(api_server, pool, ids, make_user):
    url, token = await a_file(api_server, pool, ids, make_user)
    project, clip = url.split("/")[4], url.split("/")[6]
    async with client(api_server, token, **{"Accept-Encoding": "identity"}) as http:
        document = (await http.get("/schema")).json()
        paths = [p for p, item in document["paths"].items() if "get" in item]
        assert len(paths) >= 10
        concrete = [p.replace("{project_id}", project).replace("{clip_id}", clip) for p in paths]
        for path in [*concrete, "/", "/index.html", "/app.js", "/style.css", "/schema", "/schema/asyncapi"]:
            got, head = await http.get(path), await http.head(path)
            assert head.status_code == got.status_code == 200, (path, head.status_code, got.status_code)
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            if path not in ("/api/extraction/health", "/metrics", "/api/events"):  # these change between calls
                assert head.headers["content-length"] == got.headers["content-length"], path
            assert "get" not in document["paths"].get(path, {}) or "head" in document["paths"][path], path
        for path in paths:
            assert "head" in document["paths"][path], path


async def test_the_feeds_json_is_compressed_when_asked_and_the_bulk_client_asks_for_none(api_server, ids, make_user):
    """API.md: JSON is compressed when the client accepts it, the feed's pages and NDJSON stream included; the
    Python client's bulk catch-up (beside the service, bound by the server's CPU) asks for identity."""
    from api.feed_client import NDJSON

    _, token = await make_user()
    project = ids.project()
    async with client(api_server, token, **{"Accept-Encoding": "br"}) as http:
        for i in range(5):  # a page of several events is well over the 500 bytes below which nothing is compressed
            body = {"clip_id": f"c{i}", "source": "a.mp4", "start": 0, "end": 1}
            assert (await http.post(f"/api/clips/projects/{project}/clips", json=body)).status_code == 201
        page = await http.get("/api/events", params={"project_id": project})
        assert page.headers.get("content-encoding") == "br" and len(page.json()["events"]) == 5
        stream = await http.get("/api/events", params={"project_id": project}, headers={"Accept": NDJSON["Accept"]})
        assert stream.headers.get("content-encoding") == "br" and len(stream.text.splitlines()) == 5
        bulk = await http.get("/api/events", params={"project_id": project}, headers=NDJSON)
        assert "content-encoding" not in bulk.headers and bulk.text == stream.text


@pytest.mark.parametrize("encoding", ["gzip", "br"])
async def test_json_schema_and_ui_files_are_compressed(api_server, make_user, encoding: str):
    _, token = await make_user()
    async with client(api_server, token, **{"Accept-Encoding": encoding}) as http:
        for path in ("/schema", "/schema/asyncapi", "/app.js", "/style.css", "/"):
            response = await http.get(path)
            assert response.status_code == 200
            assert response.headers.get("content-encoding") == encoding, path
            assert "accept-encoding" in response.headers["vary"].lower(), path
        assert (await http.get("/schema")).json()["openapi"].startswith("3.")  # decoded by httpx
    async with client(api_server, token) as http:  # no Accept-Encoding: as is
        http.headers["Accept-Encoding"] = "identity"
        assert "content-encoding" not in (await http.get("/schema")).headers


async def test_ui_files_answer_304_to_a_matching_etag(api_server):
    async with client(api_server) as http:
        for path in ("/", "/app.js", "/style.css"):
            first = await http.get(path)
            assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
            again = await http.get(path, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304 and again.content == b"", path
            assert again.headers["etag"] == first.headers["etag"]
            assert (await http.get(path, headers={"If-None-Match": '"stale"'})).status_code == 200
            since = await http.get(path, headers={"If-Modified-Since": first.headers["last-modified"]})
            assert since.status_code == 304, path


# CORS and the WebSocket's Origin ------------------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers(tuned_server, api_server, make_user):
    _, token = await make_user()
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    async with client(tuned_server) as http:
        for path in ("/api/clips/projects/p1/clips", "/api/events", "/api/clips/projects/p1/clips/c1/file"):
            answer = await http.options(path, headers=preflight)
            assert answer.status_code == 204, (path, answer.text)
            assert answer.headers["access-control-allow-origin"] == ORIGIN
            allowed = answer.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "idempotency-key"} <= {h.strip() for h in allowed.split(",")}
            assert "POST" in answer.headers["access-control-allow-methods"]
        refused = await http.options("/api/events", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in refused.headers
        simple = await http.get("/api/events", headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
        assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
        assert "etag" in simple.headers["access-control-expose-headers"].lower()
    async with client(api_server) as http:  # CLIPLOG_CORS_ORIGINS unset: no CORS at all
        answer = await http.options("/api/events", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers


async def test_the_socket_checks_a_browser_origin(tuned_server, pool, ids, make_user):
    user, token = await make_user()
    project = ids.project()
    position = await register(pool, project, user)
    url = ws_url(tuned_server.ws_url, token)
    messages, code, reason = await close_code(url, origin="https://evil.example")
    assert (messages, code) == ([], 4403), reason
    for origin in (ORIGIN, tuned_server.url, None):  # configured, the API's own, none (not a browser)
        async with await open_socket(url, origin=origin) as ws:
            assert (await receive_events(ws, position))[-1]["position"] == position, origin


# Tokens on open sockets -----------------------------------------------------------------------------------------


async def test_a_revoked_token_closes_its_open_sockets(tuned_server, pool, ids, make_user):
    user, token = await make_user()
    _, other = await make_user()
    project = ids.project()
    position = await register(pool, project, user)
    async with await open_socket(ws_url(tuned_server.ws_url, token)) as ws, \
            await open_socket(ws_url(tuned_server.ws_url, other)) as bystander:
        assert (await receive_events(ws, position))[-1]["position"] == position  # live before the revocation
        assert await revoke_token(pool, token) is not None
        async with client(tuned_server, token) as http:
            assert (await http.get("/api/events")).status_code == 401  # HTTP: at once
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, closed.value
        assert "revoked" in closed.value.rcvd.reason
        await bystander.ping()  # another token's socket stays open
        assert bystander.close_code is None
    messages, code, _ = await close_code(ws_url(tuned_server.ws_url, token))
    assert (messages, code) == ([], 4401)


async def test_sockets_per_token_are_limited(tuned_server, pool, ids, make_user):
    user, token = await make_user()
    project = ids.project()
    position = await register(pool, project, user)
    url = ws_url(tuned_server.ws_url, token)
    sockets = tuned_server.state.sockets
    first, second = await open_socket(url), await open_socket(url)
    try:
        for ws in (first, second):
            await receive_events(ws, position)
        messages, code, reason = await close_code(url)
        assert (messages, code) == ([], 4429), reason
        assert sockets.count(hash_token(token)) == 2
        _, other = await make_user()  # other tokens are not affected
        async with await open_socket(ws_url(tuned_server.ws_url, other)) as ws:
            await ws.ping()
        await first.close()
        async with asyncio.timeout(10):
            while sockets.count(hash_token(token)) > 1:
                await asyncio.sleep(0.02)
        async with await open_socket(url) as third:
            assert (await receive_events(third, position))[-1]["position"] == position
    finally:
        await first.close()
        await second.close()


def test_token_list_and_revoke_commands(api_env, database_url: str, ids) -> None:  # noqa: ANN001
    env = {**os.environ, **api_env(database_url)}
    user = f"u{ids.clip()}"

    def cliplog(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    tokens = [cliplog("token", "create", user).stdout.strip().splitlines()[-1] for _ in range(2)]
    listed = cliplog("token", "list", user)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and not any(t in listed.stdout for t in tokens)
    ids_shown = sorted(line.split()[0] for line in lines)
    assert ids_shown == sorted(hash_token(t)[:16] for t in tokens)
    assert cliplog("token", "revoke", tokens[0]).returncode == 0  # by the token
    assert cliplog("token", "revoke", hash_token(tokens[1])[:16]).returncode == 0  # by its id
    assert cliplog("token", "list", user).stdout.strip() == ""
    missing = cliplog("token", "revoke", "no-such-token")
    assert missing.returncode == 1 and "no such token" in missing.stderr
    bad = cliplog("token", "list", "bad id")
    assert bad.returncode == 2 and "USER must match" in bad.stderr and "Traceback" not in bad.stderr


# What /schema and /schema/asyncapi declare -------------------------------------------------------------------------


async def test_the_document_declares_auth_statuses_and_constraints(api_server):
    async with client(api_server) as http:
        document = (await http.get("/schema")).json()
        asyncapi = (await http.get("/schema/asyncapi")).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearer"]["description"]
    }
    operations = {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}
    public = {"/api/extraction/health", "/metrics"}
    for (method, path), op in operations.items():
        if path in public:
            assert "security" not in op and "401" not in op["responses"], path
        else:
            assert op["security"] == [{"bearer": []}] and "401" in op["responses"], (method, path)
        for parameter in op.get("parameters", []):
            if parameter["name"] in ("project_id", "clip_id"):
                assert parameter["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$", (path, parameter)
    clips = "/api/clips/projects/{project_id}/clips"
    expected = {
        ("post", clips): {"200", "201", "400", "401", "404", "409", "413"},
        ("post", clips + "/{clip_id}/retry-extraction"): {"200", "202", "401", "404", "409"},
        ("get", clips + "/{clip_id}"): {"200", "401", "404"},
        ("get", clips + "/{clip_id}/events"): {"200", "401", "404"},
        ("get", clips + "/{clip_id}/file"): {"200", "206", "304", "401", "404", "409", "416"},
        ("get", "/api/events"): {"200", "400", "401", "404", "410"},
        ("get", "/api/extraction/health"): {"200", "503"},
    }
    for key, statuses in expected.items():
        assert statuses <= set(operations[key]["responses"]), (key, sorted(operations[key]["responses"]))
    file_responses = operations[("get", clips + "/{clip_id}/file")]["responses"]
    assert "Content-Range" in file_responses["206"]["headers"] and "Content-Range" in file_responses["416"]["headers"]
    assert "ETag" in file_responses["200"]["headers"]
    headers = {p["name"] for p in operations[("get", clips + "/{clip_id}/file")]["parameters"] if p["in"] == "header"}
    assert {"Range", "If-Range", "If-None-Match", "If-Modified-Since"} <= headers
    assert operations[("post", "/api/clips/projects/{project_id}/cancel-all")]["requestBody"]["required"] is False
    assert operations[("post", clips)]["requestBody"]["required"] is True
    for closed in ("RegisterClip", "StatusFilter"):  # forbid_unknown_fields
        assert document["components"]["schemas"][closed]["additionalProperties"] is False, closed
    query = {p["name"]: p["schema"] for p in operations[("get", "/api/events")]["parameters"]}
    assert (query["limit"]["minimum"], query["limit"]["maximum"]) == (1, 1000)
    assert (query["wait"]["minimum"], query["wait"]["maximum"]) == (0, 30)

    assert asyncapi["asyncapi"].startswith("3.") and asyncapi["channels"]["events"]["address"] == "/api/events/ws"
    schemas = asyncapi["components"]["schemas"]
    event = schemas[asyncapi["components"]["messages"]["event"]["payload"]["$ref"].split("/")[-1]]
    assert event["properties"]["type"] == {"enum": ["event"]}
    inner = schemas[event["properties"]["event"]["$ref"].split("/")[-1]]
    page = document["components"]["schemas"]["EventPage"]["properties"]["events"]["items"]["$ref"].split("/")[-1]
    assert set(inner["properties"]) == set(document["components"]["schemas"][page]["properties"])
    assert set(asyncapi["components"]["messages"]) >= {"event", "ping", "reset"}
    json.dumps(asyncapi)  # plain JSON
