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
-- others). An index on user_id that a legacy database brings would do the
-- same.
--
-- Each of these indexes is now keyed on one value computed from its columns,
-- and the lookup (and the insert's ON CONFLICT) compares that value: no other
-- index holds it, so there is no other index to choose, whatever the
-- statistics say. The rules are unchanged: the same columns, the same partial
-- predicates, the same names, and a job without an image hash (a legacy
-- writer's) has no key (NULL), so it is never a duplicate, as before.
--
-- The keys are byte strings, compared byte by byte: the user id's 16 bytes,
-- then each text column's bytes, the variable ones ended by a zero byte (which
-- text never contains), so two keys are equal exactly when every column is. A
-- composite-type key was measured first and rejected: its comparisons cost
-- the drain's statements 20-30% (pgbench, claims and completions of 100 jobs,
-- 300,000-row table); these measured within the noise of the old indexes
-- (82-99 against 82-130 transactions/s; single-row inserts 3,735-4,745
-- against 3,625-5,158/s; the benchmark's drain 5,555-6,657 against
-- 5,505-7,414 jobs/s).
-- They are SQL functions with a one-expression body, which Postgres inlines
-- both in the index definitions and in the queries, so the two match.

-- A text's bytes, immutably (convert_to depends on the session's encoding
-- settings): every backslash is doubled, and decoding the escapes undoes it.
CREATE FUNCTION jobq_text_bytes(value text) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN decode(replace(value, E'\\', E'\\\\'), 'escape');

CREATE FUNCTION jobq_submission_key(user_id uuid, image_hash text, schema_version text,
                                    prompt_version text) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN uuid_send(user_id)
        || jobq_text_bytes(schema_version) || decode('00', 'hex')
        || jobq_text_bytes(prompt_version) || decode('00', 'hex')
        || jobq_text_bytes(image_hash);

CREATE FUNCTION jobq_request_key(user_id uuid, request_id uuid) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN uuid_send(user_id) || uuid_send(request_id);

-- At most one live job per user and submission, unless exempt.
CREATE UNIQUE INDEX menu_extraction_jobs_live_submission_keyed ON menu_extraction_jobs
    ((jobq_submission_key(user_id, image_hash, schema_version, prompt_version)))
    WHERE status IN ('queued', 'processing', 'completed') AND NOT dedup_exempt;
DROP INDEX menu_extraction_jobs_live_submission;
ALTER INDEX menu_extraction_jobs_live_submission_keyed RENAME TO menu_extraction_jobs_live_submission;

-- The exempt jobs of a submission, in creation order.
CREATE INDEX menu_extraction_jobs_exempt_submission_keyed ON menu_extraction_jobs
    ((jobq_submission_key(user_id, image_hash, schema_version, prompt_version)), created_at, id)
    WHERE dedup_exempt;
DROP INDEX menu_extraction_jobs_exempt_submission;
ALTER INDEX menu_extraction_jobs_exempt_submission_keyed RENAME TO menu_extraction_jobs_exempt_submission;

-- One job per (user, request_id).
CREATE UNIQUE INDEX menu_extraction_jobs_submit_request_keyed ON menu_extraction_jobs
    ((jobq_request_key(user_id, submit_request_id)))
    WHERE submit_request_id IS NOT NULL;
DROP INDEX menu_extraction_jobs_submit_request;
ALTER INDEX menu_extraction_jobs_submit_request_keyed RENAME TO menu_extraction_jobs_submit_request;
