"""`cliplog export --url URL --token T`: the same export as from the database, read from a running cliplog through
the NDJSON stream with no database at all; importing it into an empty database then `cliplog check` passes."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import msgspec

from eventlog import export
from tests.integration.test_replay_tools import _without_positions, cliplog, make_histories

decode_event = msgspec.json.Decoder(export.RawEvent).decode


def read(path: Path) -> tuple[dict, list]:
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    header.pop("exported_at")
    return header, [decode_event(line) for line in lines[1:]]


async def test_an_export_over_http_equals_the_export_from_the_database(
    pool: asyncpg.Pool, database_url: str, make_database, make_user, api_server, ids, tmp_path: Path  # noqa: ANN001
) -> None:
    user, token = await make_user()
    project = ids.project()
    await make_histories(pool, project, user=user)
    other, _ = await make_user()
    await make_histories(pool, ids.project(), user=other)  # another user's project, interleaved in the log: not exported
    url = ["--url", api_server.url, "--token", token]

    for selection in (["--project", project], ["--project", project, "--clip", "budget"]):
        cliplog("export", *selection, "--output", str(tmp_path / "db.jsonl"), database_url=database_url)
        done = cliplog("export", *selection, *url, "--output", str(tmp_path / "http.jsonl"), database_url=None)
        assert "exported" in done.stderr
        from_db, from_http = read(tmp_path / "db.jsonl"), read(tmp_path / "http.jsonl")
        assert from_http == from_db  # the header (but the time of export) and every event, data byte for byte
        header, events = from_http
        assert events and header["count"] == len(events) and header["owners"] == {project: user}
        assert {e.stream for e in events} <= {f"{project}/{c}" for c in ("budget", *([] if "--clip" in selection
                                                                                      else [e.clip_id for e in events]))}

    # --all over HTTP: every project of the token's user (here the one), none of another user's
    cliplog("export", "--all", *url, "--output", str(tmp_path / "mine.jsonl"), database_url=None)
    header, events = read(tmp_path / "mine.jsonl")
    assert header["owners"] == {project: user} and {e.project_id for e in events} == {project}

    # continuing from the export's upto_cursor brings nothing more, as from the database
    after = read(tmp_path / "http.jsonl")[0]["range"]["upto_cursor"]
    cliplog("export", "--project", project, *url, "--after", after, "--output", str(tmp_path / "more.jsonl"),
            database_url=None)  # fmt: skip
    assert read(tmp_path / "more.jsonl")[1] == []

    # the export over HTTP imports into an empty database, and the projection then equals a rebuild from the log
    cliplog("export", "--project", project, *url, "--output", str(tmp_path / "all.jsonl"), database_url=None)
    empty = await make_database(migrated=True)
    assert f"into {project} (owner {user})" in cliplog("import", str(tmp_path / "all.jsonl"), database_url=empty).stdout
    assert "the projection equals a rebuild" in cliplog("check", database_url=empty).stdout
    assert _without_positions(cliplog("replay", "--project", project, database_url=empty).stdout) == _without_positions(
        cliplog("replay", "--project", project, database_url=database_url).stdout
    )


async def test_an_export_over_http_is_refused_with_the_apis_reason(api_server, ids, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "x.jsonl"
    bad = cliplog("export", "--project", ids.project(), "--url", api_server.url, "--token", "nope", "--output",
                  str(out), database_url=None, check=False)  # fmt: skip
    assert bad.returncode == 1 and "401" in bad.stderr and not out.exists()
    missing = cliplog("export", "--project", "p", "--url", api_server.url, "--output", str(out), database_url=None,
                      check=False)  # fmt: skip
    assert missing.returncode != 0 and "--token" in missing.stderr
