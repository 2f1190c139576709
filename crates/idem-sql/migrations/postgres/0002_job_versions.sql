-- Jobs are written compare-and-set: every write moves `version` on (it is the job's ETag). A job the
-- scheduler cannot read or plan is set aside as state 'quarantined' with the reason; a fire whose key
-- is held by another request is recorded as 'key_conflict'.
ALTER TABLE jobs ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN quarantine_reason text;
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('active', 'paused', 'finished', 'quarantined'));
ALTER TABLE job_runs DROP CONSTRAINT job_runs_outcome_check;
ALTER TABLE job_runs ADD CONSTRAINT job_runs_outcome_check
    CHECK (outcome IN ('fired', 'missed', 'skipped_overlap', 'key_conflict'));
