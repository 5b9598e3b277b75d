-- Fair dispatch: the clip's priority as a column (the projection's jsonb has it too), so the dispatcher and health
-- can pick and count the attempts waiting for admission without decoding every state. Rows of clips registered
-- before priorities existed are interactive, as their events decode.

ALTER TABLE clips ADD COLUMN IF NOT EXISTS priority text NOT NULL DEFAULT 'interactive';
