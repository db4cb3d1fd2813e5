-- The version trigger, cheaper. Issue 8's benchmark showed it taking 0.6 ms a
-- row, most of a claim's time, because it compared whole rows as JSON. Now an
-- update that changes the status, the lease or the cancel request is a real
-- change at once; only other updates (a heartbeat, a legacy writer's) still
-- compare every column but the lease's expiry and the bookkeeping columns.
-- It decides exactly as 0004's did.
CREATE OR REPLACE FUNCTION jobq_touch_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status
       AND NEW.lease_id IS NOT DISTINCT FROM OLD.lease_id
       AND NEW.cancel_requested IS NOT DISTINCT FROM OLD.cancel_requested THEN
        IF (to_jsonb(NEW) - 'lease_expires_at' - 'updated_at' - 'version' - 'changed_xid')
           = (to_jsonb(OLD) - 'lease_expires_at' - 'updated_at' - 'version' - 'changed_xid') THEN
            NEW.version := OLD.version;
            NEW.updated_at := OLD.updated_at;
            NEW.changed_xid := OLD.changed_xid;
            RETURN NEW;
        END IF;
    END IF;
    NEW.version := nextval('menu_extraction_jobs_version_seq');
    NEW.updated_at := now();
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
