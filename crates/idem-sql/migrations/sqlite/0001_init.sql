-- idem's schema for SQLite. Timestamps are INTEGER milliseconds since the Unix epoch (UTC);
-- JSON values are TEXT.

CREATE TABLE jobs (
    id                       TEXT PRIMARY KEY,
    name                     TEXT,
    task                     TEXT NOT NULL,
    args                     TEXT NOT NULL,
    trigger                  TEXT NOT NULL,
    misfire_grace_seconds    REAL NOT NULL,
    coalesce                 INTEGER NOT NULL,
    max_instances            INTEGER NOT NULL,
    jitter_seconds           REAL NOT NULL,
    queue                    TEXT NOT NULL,
    priority                 INTEGER NOT NULL,
    max_retries              INTEGER NOT NULL,
    timeout_seconds          REAL NOT NULL,
    idempotency_ttl_seconds  REAL NOT NULL,
    state                    TEXT NOT NULL,
    next_run_at              INTEGER,
    last_run_at              INTEGER,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state = 'active';
CREATE INDEX jobs_task ON jobs (task);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    task              TEXT NOT NULL,
    args              TEXT NOT NULL,
    state             TEXT NOT NULL,
    queue             TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_retries       INTEGER NOT NULL,
    timeout_seconds   REAL NOT NULL,
    idempotency_key   TEXT,
    job_id            TEXT,
    scheduled_at      INTEGER NOT NULL,
    run_at            INTEGER NOT NULL,
    expires_at        INTEGER,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    result            TEXT,
    error_kind        TEXT,
    error_message     TEXT,
    lease_owner       TEXT,
    lease_expires_at  INTEGER
);
-- Claims: the queued tasks of a queue, highest priority first, then oldest.
CREATE INDEX tasks_queued ON tasks (queue, priority DESC, run_at, id) WHERE state = 'queued';
-- Promotion of scheduled and retrying tasks when their time comes.
CREATE INDEX tasks_waiting ON tasks (run_at) WHERE state IN ('scheduled', 'retrying');
-- The lease reaper.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
-- max_instances and the job filter.
CREATE INDEX tasks_job ON tasks (job_id, state) WHERE job_id IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'queued');

-- One row per live idempotency key: the task it made and the request's fingerprint.
CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);

-- The fire history; the primary key makes each (job, slot) fire once.
CREATE TABLE job_runs (
    job_id        TEXT NOT NULL,
    scheduled_at  INTEGER NOT NULL,
    task_id       TEXT,
    outcome       TEXT NOT NULL,
    recorded_at   INTEGER NOT NULL,
    PRIMARY KEY (job_id, scheduled_at)
);

CREATE TABLE workers (
    id                 TEXT PRIMARY KEY,
    host               TEXT NOT NULL,
    queues             TEXT NOT NULL,
    concurrency        INTEGER NOT NULL,
    running            INTEGER NOT NULL,
    started_at         INTEGER NOT NULL,
    last_heartbeat_at  INTEGER NOT NULL
);
