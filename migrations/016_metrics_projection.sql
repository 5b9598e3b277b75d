-- The extraction-metrics projection (projections/metrics.py): asynchronous, checkpointed (its checkpoint is the row
-- `metrics` of `checkpoints`, written in the same transaction as these rows), rebuildable from the log. /metrics and
-- health read it instead of the log, so their cost does not grow with the log.

-- Counters: ('attempts', outcome), ('duration_le', bucket bound: completed attempts at or under it, cumulative),
-- ('duration', 'sum' | 'count'), ('clips', status).
CREATE TABLE IF NOT EXISTS metric_counts (
    metric text NOT NULL,
    label  text NOT NULL,
    value  double precision NOT NULL,
    PRIMARY KEY (metric, label)
);

-- Finished attempts of the recent window (health's rates), pruned past it.
CREATE TABLE IF NOT EXISTS metric_recent_attempts (
    position        bigint PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    outcome         text NOT NULL,
    elapsed_seconds double precision
);
CREATE INDEX IF NOT EXISTS metric_recent_attempts_recorded_at ON metric_recent_attempts (recorded_at);
