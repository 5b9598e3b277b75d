-- `cliplog token list USER` reads a user's tokens (their ids are the first 16 hex digits of the stored hash).
CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens (user_id, created_at);

-- A follower of the log (the reactor) that meets an event it cannot decode stops there instead of skipping it:
-- the position and the reason, for health and operators, until the event can be read (NULL: not stopped).
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS stopped_at bigint;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS stopped_reason text;
