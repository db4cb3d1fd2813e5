-- WatchJobs: which transaction last changed each job, so that a stream (or the
-- server's change feed) can ask exactly "what committed after this snapshot?"
-- with pg_visible_in_snapshot, whatever order versions were drawn in and however
-- many notifications were lost.

ALTER TABLE menu_extraction_jobs ADD COLUMN IF NOT EXISTS changed_xid xid8;
ALTER TABLE menu_extraction_jobs ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id();

-- Only rows changed at or after a snapshot's xmin are candidates.
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_changed
    ON menu_extraction_jobs (changed_xid);

-- Every real change (not a lease extension alone) records its transaction.
CREATE OR REPLACE FUNCTION jobq_touch_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - 'lease_expires_at' - 'updated_at' - 'version' - 'changed_xid')
       = (to_jsonb(OLD) - 'lease_expires_at' - 'updated_at' - 'version' - 'changed_xid') THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
        NEW.changed_xid := OLD.changed_xid;
        RETURN NEW;
    END IF;
    NEW.version := nextval('menu_extraction_jobs_version_seq');
    NEW.updated_at := now();
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
