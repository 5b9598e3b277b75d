-- Leases of running attempts (renewed by the worker's heartbeat; operational, not truth: losing one at worst
-- makes the reaper time the attempt out) and the checkpoints of the log's followers (reactor, metrics).

CREATE TABLE IF NOT EXISTS leases (
    project_id text NOT NULL,
    clip_id    text NOT NULL,
    run        integer NOT NULL,
    attempt    integer NOT NULL,
    worker_id  text NOT NULL,
    renewed_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, clip_id)
);

CREATE TABLE IF NOT EXISTS checkpoints (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);
