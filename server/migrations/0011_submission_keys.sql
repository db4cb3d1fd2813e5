-- Submission lookups that no statistics can send down the wrong index (issue 8).
--
-- A submission transaction plans its lookup once per connection (a generic
-- plan, see SUBMISSION_PLANNING in server/src/storage/usage.rs). Its three
-- searches were written as `user_id = ... AND image_hash = ... AND ...` and
-- `user_id = ... AND submit_request_id = ...`, which the user's
-- (user_id, created_at, id) index can also answer, by reading every job of the
-- user and filtering them. When both indexes were estimated at one row, the
-- planner could take either: a plan made while the table was analyzed empty
-- but held 100 rows took the user's index for the live job, and a user with
-- 3,000 jobs then read all of them on every submission (seen in a submit
-- benchmark as lookups of 4-16 ms on one pooled connection, 0.4 ms on the
-- others).
--
-- Each of these indexes is now keyed on one value of a composite type made
-- from its columns, and the lookup (and the insert's ON CONFLICT) compares that
-- value: no other index holds it, so there is no other index to choose,
-- whatever the statistics say. The rules are unchanged: the same columns, the
-- same partial predicates, the same names. Rows without an image hash (a legacy
-- writer's) are left out of the live index by its predicate, as they were
-- before by Postgres's NULLs-are-distinct rule (a composite value holding a
-- NULL is not itself NULL, and compares equal to another like it).

CREATE TYPE jobq_submission_key AS (
    user_id        uuid,
    image_hash     text,
    schema_version text,
    prompt_version text
);

CREATE TYPE jobq_request_key AS (
    user_id    uuid,
    request_id uuid
);

-- At most one live job per user and submission, unless exempt.
CREATE UNIQUE INDEX menu_extraction_jobs_live_submission_keyed ON menu_extraction_jobs
    ((ROW(user_id, image_hash, schema_version, prompt_version)::jobq_submission_key))
    WHERE status IN ('queued', 'processing', 'completed') AND NOT dedup_exempt
      AND image_hash IS NOT NULL;
DROP INDEX menu_extraction_jobs_live_submission;
ALTER INDEX menu_extraction_jobs_live_submission_keyed RENAME TO menu_extraction_jobs_live_submission;

-- The exempt jobs of a submission, newest last.
CREATE INDEX menu_extraction_jobs_exempt_submission_keyed ON menu_extraction_jobs
    ((ROW(user_id, image_hash, schema_version, prompt_version)::jobq_submission_key), created_at, id)
    WHERE dedup_exempt;
DROP INDEX menu_extraction_jobs_exempt_submission;
ALTER INDEX menu_extraction_jobs_exempt_submission_keyed RENAME TO menu_extraction_jobs_exempt_submission;

-- One job per (user, request_id).
CREATE UNIQUE INDEX menu_extraction_jobs_submit_request_keyed ON menu_extraction_jobs
    ((ROW(user_id, submit_request_id)::jobq_request_key))
    WHERE submit_request_id IS NOT NULL;
DROP INDEX menu_extraction_jobs_submit_request;
ALTER INDEX menu_extraction_jobs_submit_request_keyed RENAME TO menu_extraction_jobs_submit_request;
