-- The worker protocol: lease length per claim, the indexes of claiming and lease
-- expiry, and change notifications that ignore lease extensions.

-- The lease length a job was claimed with: a Heartbeat without extend_by renews it.
ALTER TABLE menu_extraction_jobs ADD COLUMN IF NOT EXISTS lease_duration_ms BIGINT;

-- ClaimJobs: the oldest queued jobs first.
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_queue
    ON menu_extraction_jobs (created_at, id)
    WHERE status = 'queued';

-- Lease expiry: processing jobs by when their lease runs out.
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_leases
    ON menu_extraction_jobs (lease_expires_at)
    WHERE status = 'processing';

-- A heartbeat only moves lease_expires_at. It is not a change of the job anyone
-- watches, so it neither bumps version nor is notified: every other update is.
CREATE OR REPLACE FUNCTION jobq_touch_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - 'lease_expires_at' - 'updated_at' - 'version')
       = (to_jsonb(OLD) - 'lease_expires_at' - 'updated_at' - 'version') THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
        RETURN NEW;
    END IF;
    NEW.version := nextval('menu_extraction_jobs_version_seq');
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Updates notify only the rows whose version changed (so not heartbeats); the
-- payload is unchanged:
--   {"op": "UPDATE", "jobs": [[id, user_id, status, version], ...]}
CREATE OR REPLACE FUNCTION jobq_notify_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk json;
BEGIN
    FOR chunk IN
        SELECT json_agg(json_build_array(id, user_id, status, version) ORDER BY version)
        FROM (SELECT n.id, n.user_id, n.status, n.version,
                     (row_number() OVER (ORDER BY n.version) - 1) / 40 AS part
              FROM changed_jobs n JOIN previous_jobs o ON o.id = n.id
              WHERE n.version <> o.version) numbered
        GROUP BY part
    LOOP
        PERFORM pg_notify('menu_extraction_jobs',
                          json_build_object('op', TG_OP, 'jobs', chunk)::text);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS menu_extraction_jobs_notify_update ON menu_extraction_jobs;
CREATE TRIGGER menu_extraction_jobs_notify_update
    AFTER UPDATE ON menu_extraction_jobs
    REFERENCING OLD TABLE AS previous_jobs NEW TABLE AS changed_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobq_notify_job_updates();
