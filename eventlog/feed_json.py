"""An event's feed JSON as PostgreSQL writes it: SQL expressions over any SQL expressions of an event's fields.

The feed sends an event as the JSON msgspec writes for `eventlog.pages.EventView`: `{"position":…,"cursor":…,` and
then the fields of `FIELDS_AFTER_CURSOR`. `tail_sql` is that rest of the JSON, `print_sql` the text the cursor's
fingerprint hashes (`eventlog.cursor.fingerprint`: `stream:version:<recorded_at in UTC as Python's isoformat
writes it>`). Every append writes both with its events (`events.feed_tail`, `events.feed_print`, migrations/018),
and the fingerprint itself (`events.feed_fingerprint`, migrations/019: computed by Python, PostgreSQL 15 has no
CRC-32): a read then builds each event's whole JSON in PostgreSQL, its cursor by `eventlog.cursor.sql` (the cursor's
layout stays in `eventlog.cursor`), and Python joins them (`eventlog.pages`). For a row without the fingerprint
Python mints the cursor from the fingerprint's text; for a row without the texts (written before 018, or by a path
that does not write them) the feed builds the same text at read time from the same expressions (`STORED_PRINT`,
`STORED_TAIL`). tests/integration/test_feed.py and test_feed_stream.py check both against msgspec's encoding and
`eventlog.cursor`, in a session whose time zone is not UTC.
"""

from __future__ import annotations

FIELDS_AFTER_CURSOR = ("type", "project_id", "clip_id", "version", "recorded_at", "clip_status", "data", "schema_version")


def utc_timestamp_sql(timestamp: str) -> str:
    """SQL text of the timestamptz `timestamp` in UTC as Python writes it, without the zone: seconds, then `.` and
    six digits of microseconds unless they are zero (one `to_char`: `.000000` can only be the fraction)."""
    return f"replace(to_char(({timestamp}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '')"


def print_sql(stream: str, version: str, recorded_at: str) -> str:
    """SQL of the text the cursor's fingerprint hashes, from SQL expressions of the event's fields."""
    return f"({stream}) || ':' || ({version}) || ':' || {utc_timestamp_sql(recorded_at)} || '+00:00'"


def tail_sql(**field: str) -> str:
    """SQL of the event's JSON after its cursor, from SQL expressions of `FIELDS_AFTER_CURSOR` (by name)."""
    json_of = {
        "type": f"to_json(({field['type']})::text)::text",
        "project_id": f"to_json(({field['project_id']})::text)::text",
        "clip_id": f"to_json(({field['clip_id']})::text)::text",
        "version": f"({field['version']})::text",
        "recorded_at": f"'\"' || {utc_timestamp_sql(field['recorded_at'])} || 'Z\"'",
        "clip_status": f"to_json(({field['clip_status']})::text)::text",
        "data": f"({field['data']})::text",
        "schema_version": f"({field['schema_version']})::text",
    }
    return " || ".join(f"',\"{name}\":' || {json_of[name]}" for name in FIELDS_AFTER_CURSOR) + " || '}'"


# Over the columns of `events` (or of a query selecting its columns by their names)
ROW_PRINT = print_sql("stream", "version", "recorded_at")
ROW_TAIL = tail_sql(**{name: name for name in FIELDS_AFTER_CURSOR})
# What a read selects: the stored text, or the same text built now
STORED_PRINT = f"coalesce(feed_print, {ROW_PRINT})"
STORED_TAIL = f"coalesce(feed_tail, {ROW_TAIL})"
