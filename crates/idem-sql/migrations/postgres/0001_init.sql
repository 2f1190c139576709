-- idem's schema for PostgreSQL. Times are timestamptz (callers truncate them to milliseconds, which
-- Postgres keeps exactly); JSON values are jsonb. Ids are text in the "C" collation, so that keyset
-- pagination (`id > cursor`) orders bytes, as UUIDv7 text and the SQLite store do, whatever the
-- database's locale.

CREATE TABLE jobs (
    id                       text COLLATE "C" PRIMARY KEY,
    name                     text,
    task                     text NOT NULL,
    args                     jsonb NOT NULL,
    trigger                  jsonb NOT NULL,
    misfire_grace_seconds    double precision NOT NULL,
    coalesce                 boolean NOT NULL,
    max_instances            integer NOT NULL,
    jitter_seconds           double precision NOT NULL,
    queue                    text NOT NULL,
    priority                 smallint NOT NULL,
    max_retries              integer NOT NULL,
    timeout_seconds          double precision NOT NULL,
    idempotency_ttl_seconds  double precision NOT NULL,
    state                    text NOT NULL CHECK (state IN ('active', 'paused', 'finished')),
    next_run_at              timestamptz,
    last_run_at              timestamptz,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state = 'active';
CREATE INDEX jobs_task ON jobs (task);

CREATE TABLE tasks (
    id                text COLLATE "C" PRIMARY KEY,
    task              text NOT NULL,
    args              jsonb NOT NULL,
    state             text NOT NULL CHECK (state IN ('scheduled', 'queued', 'running',
                          'retrying', 'succeeded', 'failed', 'cancelled', 'expired')),
    queue             text NOT NULL,
    priority          smallint NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    max_retries       integer NOT NULL,
    timeout_seconds   double precision NOT NULL,
    idempotency_key   text,
    job_id            text COLLATE "C",
    scheduled_at      timestamptz NOT NULL,
    run_at            timestamptz NOT NULL,
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    result            jsonb,
    error_kind        text,
    error_message     text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- The outbox (broker mode): when this queued task's broker message was published (NULL: not
    -- yet). Reset whenever the task becomes queued again (retry, reaped lease, hand-back).
    dispatched_at     timestamptz
);
-- Claims: the queued tasks of a queue, highest priority first, then oldest.
CREATE INDEX tasks_queued ON tasks (queue, priority DESC, run_at, id) WHERE state = 'queued';
-- Promotion of scheduled and retrying tasks when their time comes (and `next_ready_at`).
CREATE INDEX tasks_waiting ON tasks (queue, run_at) WHERE state IN ('scheduled', 'retrying');
-- The lease reaper.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
-- max_instances and the job filter.
CREATE INDEX tasks_job ON tasks (job_id, state) WHERE job_id IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_expiry ON tasks (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'queued');
-- The outbox dispatcher: queued tasks not yet published (or published long ago), in claim order.
CREATE INDEX tasks_outbox ON tasks (dispatched_at, priority DESC, run_at, id)
    WHERE state = 'queued';

-- One row per live idempotency key: the task it made and the request's fingerprint. The primary key
-- is what `submit` races on (`INSERT ... ON CONFLICT`), so one key makes one task.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    task_id      text COLLATE "C" NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX idempotency_expiry ON idempotency_keys (expires_at);

-- The fire history; the primary key makes each (job, slot) fire once.
CREATE TABLE job_runs (
    job_id        text COLLATE "C" NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    task_id       text COLLATE "C",
    outcome       text NOT NULL CHECK (outcome IN ('fired', 'missed', 'skipped_overlap')),
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (job_id, scheduled_at)
);

CREATE TABLE workers (
    id                 text PRIMARY KEY,
    host               text NOT NULL,
    queues             text[] NOT NULL,
    concurrency        bigint NOT NULL,
    running            bigint NOT NULL,
    started_at         timestamptz NOT NULL,
    last_heartbeat_at  timestamptz NOT NULL
);

-- Lease rows for the store-backed `Locks` (used when no Redis is configured). A row is never
-- deleted, so its fencing counter only grows; a released lock just has expired. Expiry is judged by
-- the database's clock, so hosts with skewed clocks agree on it.
CREATE TABLE locks (
    name        text PRIMARY KEY,
    token       text NOT NULL,
    fence       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
