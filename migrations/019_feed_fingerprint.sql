-- Each event's cursor fingerprint is written with it, so that PostgreSQL can build whole catch-up pages.
--
-- A feed cursor is base64url(epoch[:8] | position | crc32 of the fingerprint's text) (`eventlog/cursor.py`).
-- PostgreSQL 15 has no CRC-32, so until now Python minted every cursor of a page from `feed_print` (migration 018),
-- one event at a time, and joined the events' JSON: the API's main work per event on a catch-up. The appends now
-- store the CRC-32 (computed by Python, which has the stream, the version and the time it passes in) as
-- `feed_fingerprint`, a signed 32-bit integer holding the same 4 bytes, and a read builds each cursor and the
-- whole answer in SQL (`eventlog.cursor.sql`, `eventlog.pages`).
--
-- Events written before this migration (or by a path that does not write it) keep NULL there, and a page holding
-- one is built as before (Python mints its cursors). So the upgrade rewrites nothing and holds its lock for an
-- instant; no default, so adding the column does not touch the rows.

-- As in 018: the table's exclusive lock for an instant, but give up after 10 s of waiting behind a reader (an
-- export, a rebuild) rather than queue every append and read behind the wait.
SET LOCAL lock_timeout = '10s';
ALTER TABLE events ADD COLUMN IF NOT EXISTS feed_fingerprint integer;

-- A row changed in place forgets its stored fingerprint with its stored text (018's trigger, now with the third
-- column): the feed builds them again from the row. An UPDATE of the stored columns alone (a backfill) keeps them.
CREATE OR REPLACE FUNCTION cliplog_forget_feed_json() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.stream, NEW.project_id, NEW.clip_id, NEW.version, NEW.type, NEW.schema_version, NEW.data,
        NEW.clip_status, NEW.recorded_at)
       IS DISTINCT FROM
       (OLD.stream, OLD.project_id, OLD.clip_id, OLD.version, OLD.type, OLD.schema_version, OLD.data,
        OLD.clip_status, OLD.recorded_at) THEN
        NEW.feed_print := NULL;
        NEW.feed_tail := NULL;
        NEW.feed_fingerprint := NULL;
    END IF;
    RETURN NEW;
END
$$;
