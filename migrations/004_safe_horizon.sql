-- The reader's safe horizon, restricted to this database.
--
-- pg_snapshot_xmin() covers every transaction on the server, so a long write transaction in another database
-- would hold back the feed. The horizon is instead the oldest transaction in the statement's snapshot that was
-- still running when the snapshot was taken, leaving out those that are running now in another database (or are
-- prepared there). A transaction of the snapshot that has finished meanwhile is kept as a candidate: it may have
-- been one of ours, and holding the horizon back until the next read is always safe.
CREATE OR REPLACE FUNCTION cliplog_safe_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH snapshot AS (SELECT pg_current_snapshot() AS s),
    foreign_xids AS (
        SELECT backend_xid AS x FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
        UNION ALL
        SELECT transaction FROM pg_prepared_xacts WHERE database <> current_database()
    )
    SELECT coalesce(
        (SELECT min(running) FROM snapshot, pg_snapshot_xip(snapshot.s) AS running
         WHERE xid(running) NOT IN (SELECT x FROM foreign_xids WHERE x IS NOT NULL)),
        (SELECT pg_snapshot_xmax(s) FROM snapshot)
    )
$$;
