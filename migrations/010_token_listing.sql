-- `cliplog token list USER` reads a user's tokens (their ids are the first 16 hex digits of the stored hash).
CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens (user_id, created_at);
