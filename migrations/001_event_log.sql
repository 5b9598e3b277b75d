-- The append-only extraction log, the identity of this log (its epoch), and the position allocator.

CREATE TABLE IF NOT EXISTS log_identity (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO log_identity (epoch) VALUES (gen_random_uuid()) ON CONFLICT DO NOTHING;

CREATE SEQUENCE IF NOT EXISTS events_position_seq;

CREATE TABLE IF NOT EXISTS events (
    position       bigint PRIMARY KEY,
    txid           xid8 NOT NULL,
    stream         text NOT NULL,
    project_id     text NOT NULL,
    clip_id        text NOT NULL,
    version        integer NOT NULL CHECK (version > 0),
    type           text NOT NULL,
    schema_version smallint NOT NULL,
    data           jsonb NOT NULL,
    clip_status    text NOT NULL,
    recorded_at    timestamptz NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_project_position ON events (project_id, position);

-- Positions follow transaction-id order: the transaction id and the positions are taken together under a lock
-- held for microseconds (not until commit). A reader then reads only rows of transactions older than the oldest
-- one still running (pg_snapshot_xmin), so a transaction that commits late can never hold a position below one
-- a reader has passed. See eventlog/store.py.
CREATE OR REPLACE FUNCTION cliplog_allocate_positions(n integer, OUT txid xid8, OUT first_position bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'cliplog_allocate_positions must be the first write of its transaction';
    END IF;
    PERFORM pg_advisory_lock(72616);
    BEGIN
        txid := pg_current_xact_id();
        first_position := nextval('events_position_seq');
        IF n > 1 THEN
            PERFORM setval('events_position_seq', first_position + n - 1);
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock(72616);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(72616);
END
$$;
