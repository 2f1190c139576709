-- The outbox: when a queued task's broker message was published (NULL: not yet). Reset whenever the
-- task becomes queued again (retry, reaped lease, hand-back).
ALTER TABLE tasks ADD COLUMN dispatched_at INTEGER;
CREATE INDEX tasks_outbox ON tasks (dispatched_at, priority DESC, run_at) WHERE state = 'queued';

-- Lease rows for the store-backed `Locks` (used when no Redis is configured). A row is never deleted,
-- so its fencing counter only grows; a released lock just has expired.
CREATE TABLE locks (
    name        TEXT PRIMARY KEY,
    token       TEXT NOT NULL,
    fence       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
