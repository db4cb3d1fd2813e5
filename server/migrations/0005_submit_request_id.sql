-- SubmitJob's request_id: the caller's name for one submission, so that a
-- submission sent again (a client retrying after a lost answer) returns the job
-- the first one made instead of making another, even with force.
ALTER TABLE menu_extraction_jobs ADD COLUMN IF NOT EXISTS submit_request_id uuid;

-- One job per (user, request_id); submissions without one are not constrained.
CREATE UNIQUE INDEX IF NOT EXISTS menu_extraction_jobs_submit_request
    ON menu_extraction_jobs (user_id, submit_request_id)
    WHERE submit_request_id IS NOT NULL;
