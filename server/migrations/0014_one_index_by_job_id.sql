-- A job's id is a key of one index only, its primary key (issue 8).
--
-- The user's jobs index (user_id, created_at, id) held the id as its third
-- column, so a statement finding jobs by id (`id = ANY($1)`, `id = $1`) could
-- also be answered by reading that whole index and testing each entry. On an
-- empty, analyzed table both indexes are estimated at nothing, and a generic
-- plan made there took the user's index (EXPLAIN of the completion planned
-- with plan_cache_mode = force_generic_plan): kept while the table grows, it
-- would read every job to complete a few. That is why completions were
-- planned at every execution, which cost steady's completions 1.2 s of
-- planning in a 30 s run.
--
-- The index now orders each user's jobs by creation instant and then by the
-- id's 16 bytes (`uuid_send(id)`), which is the id's own order (uuids compare
-- as their bytes, byte by byte, as bytea does), so ListJobs still walks it
-- backwards from its page token with nothing to sort, comparing
-- `(created_at, uuid_send(id))`. An id itself is no longer in it, so no
-- statement by id can be sent down it, whatever the statistics say. The other
-- indexes holding an id are partial and their predicates are not implied by
-- the statements that find jobs by id (the queue's needs status = 'queued',
-- the exempt submissions' needs dedup_exempt).
--
-- Readers keyed on (user_id) or (user_id, created_at), the legacy system's
-- included, use it as before.
CREATE INDEX menu_extraction_jobs_user_created_keyed
    ON menu_extraction_jobs (user_id, created_at, (uuid_send(id)));
DROP INDEX menu_extraction_jobs_user_created;
ALTER INDEX menu_extraction_jobs_user_created_keyed RENAME TO menu_extraction_jobs_user_created;
