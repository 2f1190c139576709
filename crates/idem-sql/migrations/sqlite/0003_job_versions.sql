-- Jobs are written compare-and-set: every write moves `version` on (it is the job's ETag). A job the
-- scheduler cannot read or plan is set aside as state 'quarantined' with the reason.
ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN quarantine_reason TEXT;
