-- The readers' safe horizon matches a transaction's two locks by backend, not by virtual transaction id.
--
-- 005 left a transaction of the reader's snapshot out of the horizon when pg_locks showed its lock on its own id
-- under a virtual transaction id that held no appenders' lock. But pg_locks reads a backend's virtual transaction id
-- from the live backend while it copies the lock table, and a committing backend clears that id when it leaves the
-- ProcArray, before it releases its locks, without taking the lock table's locks. One read of pg_locks can then show
-- a committing appender's two locks under two ids (`12/7831` and `12/0`): the appender looked like a transaction that
-- cannot append, the horizon passed it while its rows were not yet in the reader's snapshot, and the reader skipped
-- them for good (seen under load on PostgreSQL 16; tests/integration/test_horizon.py holds the lock table caught).
-- A backend's pid does not change while it holds locks, so a live transaction's locks are matched by pid.
--
-- Prepared transactions (pg_locks shows no pid for them) are judged without the lock table, which PREPARE rewrites
-- partition by partition (its locks move from the backend to the prepared transaction's virtual transaction id,
-- `-1/<xid>`): a prepared transaction stays in the horizon unless pg_prepared_xacts says it belongs to another
-- database, and a backend's transaction whose prepared self already holds the appenders' lock is an appender.
-- (cliplog never prepares a transaction; the rule only has to be safe.)
--
-- The decision is a pure function of what it reads, `cliplog_horizon_of(snapshot, locks, database, prepared
-- elsewhere)`; `cliplog_safe_horizon()` feeds it the statement's snapshot, the granted rows of one read of pg_locks
-- that it needs, this database's oid and the ids of the transactions prepared in other databases. The tests call
-- the decision with lock tables as PostgreSQL showed them.

CREATE TYPE cliplog_lock AS (
    locktype           text,
    database           oid,
    classid            oid,
    objid              oid,
    objsubid           smallint,
    mode               text,
    granted            boolean,
    transactionid      xid,
    virtualtransaction text,
    pid                integer
);

CREATE OR REPLACE FUNCTION cliplog_horizon_of(s pg_snapshot, locks cliplog_lock[], db oid, prepared_elsewhere xid[])
RETURNS xid8 LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (WITH held AS (SELECT * FROM unnest(locks) WHERE granted),
    appenders AS (  -- backends (pid) and prepared transactions (virtualtransaction `-1/<xid>`) appending to this log
        SELECT pid, virtualtransaction FROM held
        WHERE locktype = 'advisory' AND classid = 0 AND objid = 72619 AND objsubid = 1 AND mode = 'ShareLock'
          AND database = db
    ),
    running_non_appenders AS (  -- transactions that hold an id and cannot append to this log
        SELECT transactionid AS x FROM held AS t
        WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock'
          AND (pid IS NOT NULL OR transactionid = ANY (prepared_elsewhere))
          AND NOT EXISTS (SELECT FROM appenders AS a
                          WHERE a.pid = t.pid OR a.virtualtransaction = '-1/' || t.transactionid)
    )
    SELECT coalesce(
        (SELECT min(running) FROM pg_snapshot_xip(s) AS running
         WHERE xid(running) NOT IN (SELECT x FROM running_non_appenders)),
        pg_snapshot_xmax(s)
    ));
END
$$;

CREATE OR REPLACE FUNCTION cliplog_safe_horizon() RETURNS xid8
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN cliplog_horizon_of(
        pg_current_snapshot(),
        ARRAY(SELECT (locktype, database, classid, objid, objsubid, mode, granted, transactionid, virtualtransaction,
                      pid)::cliplog_lock
              FROM pg_locks
              WHERE granted AND (locktype = 'transactionid' OR (locktype = 'advisory' AND objid = 72619))),
        (SELECT oid FROM pg_database WHERE datname = current_database()),
        ARRAY(SELECT transaction FROM pg_prepared_xacts WHERE database <> current_database())
    );
END
$$;
