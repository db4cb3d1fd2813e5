-- The lease-expiry index holds only what lease expiry looks for: processing jobs
-- with a lease that runs out. Its predicate names lease_expires_at, which
-- CompleteJob's batch statement does not, so the planner can no longer choose
-- it there. Issue 8's steady benchmark showed that statement reading it under
-- statistics that said few jobs were processing: a bitmap scan of 65,558 entries
-- (those of finished jobs, until vacuum) to complete 79 jobs found by primary key.
-- Lease expiry (status = 'processing' AND lease_expires_at < now()) implies the
-- predicate and uses the index as before. A processing job without a lease (a
-- legacy writer's) was never expired and still is not.
DROP INDEX IF EXISTS menu_extraction_jobs_leases;
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_leases
    ON menu_extraction_jobs (lease_expires_at)
    WHERE status = 'processing' AND lease_expires_at IS NOT NULL;
