"""Read models derived from the event log: clip status (inline, same transaction), rebuilds."""
