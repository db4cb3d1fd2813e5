-- The claim as a function whose plan is made once per connection and cannot
-- be made bad by the statistics of its time (issue 8's pickup profile).
--
-- Planning the claim at every execution took about a third of a one-job claim
-- (0.45-0.6 ms of 1.1-1.5 ms on the slow machines). A plan cached for every
-- value (Postgres's generic plan) skips that, but it is made from the
-- statistics of its time and kept until the next ANALYZE, and the claim's was
-- unsafe: made on the empty table, it joined the claimed jobs back by scanning
-- the whole primary key (1.26 s to claim 100 of 20,000 queued jobs), and
-- rewritten to find them by `id = ANY`, by scanning the (user_id, created_at,
-- id) index instead (105 ms). Here no statistics can choose between plans,
-- because there is one that does not pay a disabled node:
--
-- - the oldest queued jobs come from the queue index, walked in order and
--   stopped after the slots: with sequential scans, bitmap scans and sorts
--   disabled, every other way of reading them (another index in full, then a
--   sort) carries the planner's disable cost, whatever the row estimates;
-- - they are found again by their physical address (ctid), which only a TID
--   scan reads without a sequential scan: no index is keyed on it, so no index
--   scan, hash join or merge join can be chosen instead of the nested loop.
--   The address is that of the version the claim locked, and nothing can move
--   a locked row before the statement ends. (If a queued job was updated by a
--   transaction that committed after the claim began, its locked version is
--   not visible to the claim's snapshot, and the claim leaves it queued for
--   the next one instead of claiming it.)
--
-- jit is off because the disable costs would otherwise reach the JIT
-- compiler's thresholds (the notification trigger, run inside, has sorts).
--
-- The settings hold for the function's own statements only. The result's
-- columns are the job's (the server's job_columns!) and its new lease.
CREATE OR REPLACE FUNCTION jobq_claim(slots int[], workers text[], leases bigint[])
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
        started_at = now(),
        attempt = j.attempt + 1,
        worker_id = workers[dealt.caller + 1],
        lease_id = gen_random_uuid(),
        lease_duration_ms = leases[dealt.caller + 1],
        lease_expires_at = now() + leases[dealt.caller + 1] * INTERVAL '1 millisecond',
        version = nextval('menu_extraction_jobs_version_seq'),
        updated_at = now(),
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
