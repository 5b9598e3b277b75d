-- The readers' safe horizon as a pure function of what it reads: the statement's snapshot and one read of pg_locks.
--
-- `cliplog_horizon_of(snapshot, locks, database)` decides; `cliplog_safe_horizon()` only feeds it the statement's
-- snapshot, the granted rows of pg_locks it needs (one read) and this database's oid. Tests call the decision with
-- lock tables as PostgreSQL shows them.

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

CREATE OR REPLACE FUNCTION cliplog_horizon_of(s pg_snapshot, locks cliplog_lock[], db oid) RETURNS xid8
LANGUAGE sql IMMUTABLE AS $$
    WITH held AS (SELECT * FROM unnest(locks) WHERE granted),
    appending AS (
        SELECT virtualtransaction FROM held
        WHERE locktype = 'advisory' AND classid = 0 AND objid = 72619 AND objsubid = 1 AND mode = 'ShareLock'
          AND database = db
    ),
    running_non_appenders AS (
        SELECT transactionid AS x FROM held
        WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock'
          AND virtualtransaction NOT IN (SELECT virtualtransaction FROM appending)
    )
    SELECT coalesce(
        (SELECT min(running) FROM pg_snapshot_xip(s) AS running
         WHERE xid(running) NOT IN (SELECT x FROM running_non_appenders)),
        pg_snapshot_xmax(s)
    )
$$;

CREATE OR REPLACE FUNCTION cliplog_safe_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    SELECT cliplog_horizon_of(
        pg_current_snapshot(),
        ARRAY(SELECT (locktype, database, classid, objid, objsubid, mode, granted, transactionid, virtualtransaction,
                      pid)::cliplog_lock
              FROM pg_locks
              WHERE granted AND (locktype = 'transactionid' OR (locktype = 'advisory' AND objid = 72619))),
        (SELECT oid FROM pg_database WHERE datname = current_database())
    )
$$;
