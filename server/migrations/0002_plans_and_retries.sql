-- Users' plans, and at most one retry per failed job.

-- A user without a row is on the default plan ("free").
CREATE TABLE IF NOT EXISTS user_plans (
    user_id    UUID PRIMARY KEY,
    plan       VARCHAR(50) NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- RetryJob: retrying a failed job twice returns the first retry; this index makes
-- that hold under concurrency (and serves the lookup of a job's retry).
CREATE UNIQUE INDEX IF NOT EXISTS menu_extraction_jobs_one_retry
    ON menu_extraction_jobs (retry_of_job_id)
    WHERE retry_of_job_id IS NOT NULL;
