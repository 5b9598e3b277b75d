-- Each event's feed JSON is made once, when the event is written, instead of at every read.
--
-- The feed sends an event as the JSON msgspec writes for `eventlog.pages.EventView`: `{"position":…,"cursor":…,`
-- then the fields below. PostgreSQL built that text from the columns at every read (a `to_char` of the time, the
-- fingerprint's text, eight `to_json` and concatenations: half the cost of a catch-up page). Two stored generated
-- columns now hold it, computed by the same expressions when a row is inserted (by every insert path: appends,
-- imports, bulk loads) and, by this migration's table rewrite, for the rows already there:
--
--   feed_print  the text the cursor's fingerprint hashes (`eventlog.cursor.fingerprint`):
--               `stream:version:<recorded_at in UTC as Python's isoformat writes it>`
--   feed_tail   the event's JSON after its cursor: `,"type":…,"schema_version":…}`
--
-- Python mints the cursor (position and the crc32 of `feed_print`, `eventlog.cursor`) and joins the three. The
-- functions are IMMUTABLE as a generated column needs: the time is formatted in UTC with a fixed numeric pattern, so
-- the session's time zone and locale do not enter. tests/integration/test_feed.py and test_feed_stream.py check
-- the columns against `eventlog.cursor.fingerprint` and msgspec's encoding of `EventView`.
--
-- Upgrading rewrites `events` once under an exclusive lock (200,000 events took 5.8 s on this machine, loaded):
-- appends and reads wait for it.

CREATE OR REPLACE FUNCTION cliplog_utc_text(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT replace(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '') $$;

CREATE OR REPLACE FUNCTION cliplog_feed_print(stream text, version integer, recorded_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT stream || ':' || version || ':' || cliplog_utc_text(recorded_at) || '+00:00' $$;

CREATE OR REPLACE FUNCTION cliplog_feed_tail(
    type text, project_id text, clip_id text, version integer, recorded_at timestamptz, clip_status text,
    data jsonb, schema_version smallint
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT ',"type":' || to_json(type)::text
    || ',"project_id":' || to_json(project_id)::text
    || ',"clip_id":' || to_json(clip_id)::text
    || ',"version":' || version::text
    || ',"recorded_at":"' || cliplog_utc_text(recorded_at) || 'Z"'
    || ',"clip_status":' || to_json(clip_status)::text
    || ',"data":' || data::text
    || ',"schema_version":' || schema_version::text
    || '}'
$$;

ALTER TABLE events
    ADD COLUMN IF NOT EXISTS feed_print text
        GENERATED ALWAYS AS (cliplog_feed_print(stream, version, recorded_at)) STORED,
    ADD COLUMN IF NOT EXISTS feed_tail text
        GENERATED ALWAYS AS (
            cliplog_feed_tail(type, project_id, clip_id, version, recorded_at, clip_status, data, schema_version)
        ) STORED;
