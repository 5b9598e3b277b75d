"""One schema per thing: what the API sends (an HTTP page of events, a clip's history, a WebSocket event message)
validates against the OpenAPI document `/schema` publishes, and every event has exactly the published fields."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import httpx
import pytest
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from domain.clip import Start
from tests.feed_support import context, open_socket, register, ws_url
from usecases.clips import start_attempt

MakeUser = Callable[[], Awaitable[tuple[str, str]]]
DOCUMENT = "urn:cliplog:openapi"


def validator(document: dict[str, Any], pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in `document`, its `$ref`s resolved against the document itself."""
    registry = Registry().with_resource(DOCUMENT, Resource(contents=document, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOCUMENT}#{pointer}"}, registry=registry)


def response_pointer(path: str) -> str:
    return "/paths/" + path.replace("~", "~0").replace("/", "~1") + "/get/responses/200/content/application~1json/schema"


async def test_pages_histories_and_socket_messages_match_the_published_schema(
    api_server, pool, ids, make_user: MakeUser
):
    user, token = await make_user()
    project, clip = ids.project(), ids.clip()
    await register(pool, project, user, clip=clip)
    started = await start_attempt(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), context)
    last = started.position
    headers = {"Authorization": f"Bearer {token}"}
    history_path = "/api/clips/projects/{project_id}/clips/{clip_id}/events"
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=40) as http:
        document = (await http.get("/schema")).json()
        page = (await http.get("/api/events", params={"project_id": project})).json()
        history = (await http.get(history_path.format(project_id=project, clip_id=clip))).json()
    messages = []
    async with await open_socket(ws_url(api_server.ws_url, token=token, project_id=project)) as ws:
        while not messages or messages[-1]["event"]["position"] < last:
            message = json.loads(await ws.recv())
            if message["type"] not in ("ping", "caught_up"):
                messages.append(message)

    validator(document, response_pointer("/api/events")).validate(page)
    validator(document, response_pointer(history_path)).validate(history)
    event_schema = validator(document, "/components/schemas/EventView")
    fields = set(document["components"]["schemas"]["EventView"]["properties"])
    for message in messages:
        assert set(message) == {"type", "event"} and message["type"] == "event"
        event_schema.validate(message["event"])
    events = [m["event"] for m in messages]
    assert [e["type"] for e in events] == ["extraction.requested", "extraction.started"]
    for event in [*events, *page["events"], *history]:
        assert set(event) == fields, event  # nothing sent that the schema does not describe
    assert page["events"] == history == events  # one shape, whichever way an event is read
    # additions to API.md's event (docs/feed.md): its data's schema version, so a feed event is the stored one whole
    assert "schema_version" in fields and [e["schema_version"] for e in events] == [1, 1]

    # The validators resolve the document's $refs: a page whose event lacks a field is refused.
    broken = {**page, "events": [{k: v for k, v in page["events"][0].items() if k != "cursor"}]}
    with pytest.raises(ValidationError, match="'cursor' is a required property"):
        validator(document, response_pointer("/api/events")).validate(broken)
