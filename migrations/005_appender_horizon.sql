-- The reader's safe horizon waits only for transactions that append events.
--
-- Before this, the horizon was the oldest transaction of this database holding a transaction id (004), so an
-- operator's forgotten `BEGIN; UPDATE ...`, a backfill or a CREATE INDEX froze every reader for as long as it ran.
--
-- Appenders now take a shared transaction-level advisory lock (key 72619) before they take their transaction id
-- (cliplog_allocate_positions must be their first write, so an appender never has an id without the lock), and keep
-- it until they end. A transaction of the reader's snapshot is left out of the horizon only when one read of the
-- lock table shows it still running (the exclusive lock every transaction holds on its own id) and not holding the
-- appenders' lock: such a transaction can never append, because it already has an id. A transaction that has
-- finished meanwhile is kept as a candidate (it may have appended rows this snapshot cannot see), which only holds
-- the horizon back until the next read. Transactions of other databases and prepared transactions are judged the
-- same way (the lock is per database).

CREATE OR REPLACE FUNCTION cliplog_allocate_positions(n integer, OUT txid xid8, OUT first_position bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'cliplog_allocate_positions must be the first write of its transaction';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(72619);  -- "this transaction appends", until it ends
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

CREATE OR REPLACE FUNCTION cliplog_safe_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH snapshot AS (SELECT pg_current_snapshot() AS s),
    locks AS MATERIALIZED (  -- one read of the lock table: both facts about a transaction come from the same instant
        SELECT locktype, database, classid, objid, objsubid, mode, transactionid, virtualtransaction
        FROM pg_locks
        WHERE granted AND (locktype = 'transactionid' OR (locktype = 'advisory' AND objid = 72619))
    ),
    appending AS (
        SELECT virtualtransaction FROM locks
        WHERE locktype = 'advisory' AND classid = 0 AND objid = 72619 AND objsubid = 1 AND mode = 'ShareLock'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    ),
    running_non_appenders AS (
        SELECT transactionid AS x FROM locks
        WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock'
          AND virtualtransaction NOT IN (SELECT virtualtransaction FROM appending)
    )
    SELECT coalesce(
        (SELECT min(running) FROM snapshot, pg_snapshot_xip(snapshot.s) AS running
         WHERE xid(running) NOT IN (SELECT x FROM running_non_appenders)),
        (SELECT pg_snapshot_xmax(s) FROM snapshot)
    )
$$;
