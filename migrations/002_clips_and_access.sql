-- The clip-status projection (written in the same transaction as the events), projects and API tokens.

CREATE TABLE IF NOT EXISTS clips (
    project_id   text NOT NULL,
    clip_id      text NOT NULL,
    version      integer NOT NULL,
    status       text NOT NULL,
    run          integer NOT NULL,
    attempt      integer NOT NULL,
    not_before   timestamptz,
    deadline_at  timestamptz,
    status_since timestamptz,
    position     bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    state        jsonb NOT NULL,
    PRIMARY KEY (project_id, clip_id)
);
CREATE INDEX IF NOT EXISTS clips_unfinished ON clips (status, status_since)
    WHERE status IN ('pending', 'running', 'retrying');

CREATE TABLE IF NOT EXISTS projects (
    project_id text PRIMARY KEY,
    owner      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash text PRIMARY KEY,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
