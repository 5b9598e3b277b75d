-- The position allocator's session lock is taken inside the block whose handler releases it; appends that write
-- the clip's row in the same statement can fail that statement when the row moved on (`cliplog_require`).
--
-- cliplog_allocate_positions (005) took its session-level advisory lock (72616) just before the BEGIN ... EXCEPTION
-- block that releases it on an error. PL/pgSQL checks for interrupts between statements, so a query cancel (asyncpg
-- sends one when the awaiting task is cancelled or times out) arriving right after the lock was granted raised
-- outside the block, and the lock stayed with the session: every other appender then waited on it. asyncpg's reset of
-- a pooled connection on release (`pg_advisory_unlock_all()` among others) used to heal that; pooled connections are
-- now released without it (eventlog/store.py, `reset_connection`), so the function itself must never leave the lock
-- behind. Now the lock is taken and released inside the block: an interrupt at any point after it was granted ends in
-- the handler, which releases it (pg_advisory_unlock of a lock this session no longer holds returns false with a
-- warning, when the interrupt came after the release).

CREATE OR REPLACE FUNCTION cliplog_allocate_positions(n integer, OUT txid xid8, OUT first_position bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'cliplog_allocate_positions must be the first write of its transaction';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(72619);  -- "this transaction appends", until it ends
    BEGIN
        PERFORM pg_advisory_lock(72616);
        txid := pg_current_xact_id();
        first_position := nextval('events_position_seq');
        IF n > 1 THEN
            PERFORM setval('events_position_seq', first_position + n - 1);
        END IF;
        PERFORM pg_advisory_unlock(72616);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock(72616);
        RAISE;
    END;
END
$$;

-- A write of an appending statement that must land with its events (the clip's row at the version it was read at;
-- eventlog/store.py, `append_with`): false fails the statement with SQLSTATE CL409, and nothing of it is written.
CREATE OR REPLACE FUNCTION cliplog_require(ok boolean, what text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'cliplog: % wrote nothing: the row moved on', what USING ERRCODE = 'CL409';
    END IF;
    RETURN ok;
END
$$;
