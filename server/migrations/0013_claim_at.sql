-- The claim at a given instant (issue 8: jobs handed to parked workers).
--
-- A submission may claim its new jobs for workers parked on its server in its
-- own transaction (server/src/handoff.rs). Its jobs are created at the instant
-- it read after taking its users' locks (clock_timestamp()), while now() is
-- when its transaction began, earlier: a claim at now() would have started and
-- updated the job before it was created, and WatchJobs, which tells a created
-- job by updated_at = created_at, would have called its first event an update.
-- The submission passes its creation instant; ClaimJobs passes NULL, which
-- claims at now(), as before. The lease runs from that instant.
--
-- The plan and its guarantees are 0010's (see there); only the instant is new.
-- The three-argument form stays for servers not yet upgraded, and claims at
-- now() through this one.

CREATE FUNCTION jobq_claim(slots int[], workers text[], leases bigint[], claimed_at timestamptz)
RETURNS TABLE (caller int, id uuid, user_id uuid, image_url text, image_hash varchar,
    status varchar, schema_version varchar, prompt_version varchar, result jsonb,
    error_message text, processing_time int, retry_count int, retry_of_job_id uuid,
    attempt int, token_usage jsonb, confidence real, uncertain_items jsonb,
    superfluous_text jsonb, created_at timestamptz, updated_at timestamptz,
    started_at timestamptz, completed_at timestamptz, version bigint,
    cancel_requested boolean, lease_id uuid, lease_expires_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    claim_instant timestamptz := coalesce(claimed_at, now());
BEGIN
    -- Slot n of the batch goes to caller slots[n]; workers[c + 1] and
    -- leases[c + 1] are caller c's worker id and lease length in ms.
    RETURN QUERY
    WITH picked AS (
        SELECT oldest.ctid AS picked_ctid,
               row_number() OVER (ORDER BY oldest.created_at, oldest.id) AS slot
        FROM (SELECT q.ctid, q.created_at, q.id FROM menu_extraction_jobs AS q
              WHERE q.status = 'queued'
              ORDER BY q.created_at, q.id
              LIMIT cardinality(slots)
              FOR UPDATE SKIP LOCKED) AS oldest
    ),
    dealt AS (
        SELECT picked_ctid, slots[slot] AS caller FROM picked
    )
    UPDATE menu_extraction_jobs AS j
    SET status = 'processing',
        started_at = claim_instant,
        attempt = j.attempt + 1,
        worker_id = workers[dealt.caller + 1],
        lease_id = gen_random_uuid(),
        lease_duration_ms = leases[dealt.caller + 1],
        lease_expires_at = claim_instant + leases[dealt.caller + 1] * INTERVAL '1 millisecond',
        version = nextval('menu_extraction_jobs_version_seq'),
        updated_at = claim_instant,
        changed_xid = pg_current_xact_id()
    FROM dealt
    WHERE j.ctid = dealt.picked_ctid
    RETURNING dealt.caller, j.id, j.user_id, j.image_url, j.image_hash, j.status,
        j.schema_version, j.prompt_version, j.result, j.error_message, j.processing_time,
        j.retry_count, j.retry_of_job_id, j.attempt, j.token_usage, j.confidence,
        j.uncertain_items, j.superfluous_text, j.created_at, j.updated_at, j.started_at,
        j.completed_at, j.version, j.cancel_requested, j.lease_id, j.lease_expires_at;
END
$$;

CREATE OR REPLACE FUNCTION jobq_claim(slots int[], workers text[], leases bigint[])
RETURNS TABLE (caller int, id uuid, user_id uuid, image_url text, image_hash varchar,
    status varchar, schema_version varchar, prompt_version varchar, result jsonb,
    error_message text, processing_time int, retry_count int, retry_of_job_id uuid,
    attempt int, token_usage jsonb, confidence real, uncertain_items jsonb,
    superfluous_text jsonb, created_at timestamptz, updated_at timestamptz,
    started_at timestamptz, completed_at timestamptz, version bigint,
    cancel_requested boolean, lease_id uuid, lease_expires_at timestamptz)
LANGUAGE sql
AS $$
    SELECT * FROM jobq_claim(slots, workers, leases, NULL::timestamptz)
$$;
