-- Each event's feed JSON is written with it, instead of being built at every read.
--
-- The feed sends an event as the JSON msgspec writes for `eventlog.pages.EventView`. PostgreSQL built that text
-- from the columns at every read (a `to_char` of the time, the fingerprint's text, four `to_json`, concatenations:
-- half the cost of a catch-up page). The appends now write it with each event, from the same SQL expressions
-- (`eventlog/feed_json.py`):
--
--   feed_print  the text the cursor's fingerprint hashes: `stream:version:<recorded_at in UTC, isoformat>`
--   feed_tail   the event's JSON after its cursor: `,"type":…,"schema_version":…}`
--
-- Events written before this migration (or by a path that does not write the columns) keep NULL there and the
-- feed builds their text at read time, as before. So the upgrade rewrites nothing and holds its lock for an
-- instant. (Stored generated columns were tried first: IMMUTABLE functions around to_char and to_json, evaluated
-- per INSERT, took appends with 8 writers from 0.85-1.00 of a raw INSERT to 0.67-0.68, and the upgrade rewrote the
-- whole table.)

-- Adding the columns takes the table's exclusive lock for an instant, but waits for it behind any transaction
-- reading `events` (an export, a rebuild), and every append and read would queue behind the wait: give up after
-- 10 s instead (`cliplog migrate` fails and can be run again).
SET LOCAL lock_timeout = '10s';
ALTER TABLE events ADD COLUMN IF NOT EXISTS feed_print text, ADD COLUMN IF NOT EXISTS feed_tail text;

-- The log is append-only, but a row changed in place (an operator's repair, a test simulating damage) must not keep
-- the feed's text of what it was: an UPDATE of an event's own columns forgets the stored text, and the feed builds
-- it from the row again. (An UPDATE of the two columns alone, a backfill, keeps what it writes.)
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
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER events_forget_feed_json BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION cliplog_forget_feed_json();
