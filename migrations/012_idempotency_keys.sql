-- Idempotency-Key of a POST of a clip without clip_id (API.md): the clip the key named, written in the transaction
-- that registers the clip, so a retried request finds it and never creates a second clip. `fingerprint` is a hash
-- of the request's body: the same key with another body is refused (409).

CREATE TABLE IF NOT EXISTS idempotency_keys (
    project_id  text NOT NULL,
    key         text NOT NULL,
    clip_id     text NOT NULL,
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, key)
);
