-- jobq's job table: the TypeScript system's menu_extraction_jobs (formerly ocr_jobs),
-- upgraded in place when it exists, created otherwise. Every step is idempotent
-- (IF NOT EXISTS, conditional DO blocks) because it has to run on three kinds of
-- database: a fresh one, one with the legacy table ocr_jobs, and one where the
-- TypeScript system already renamed it to menu_extraction_jobs.

-- 1. A legacy ocr_jobs table becomes menu_extraction_jobs, rows and all.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = current_schema() AND c.relname = 'ocr_jobs' AND c.relkind IN ('r', 'p')) THEN
        IF to_regclass('menu_extraction_jobs') IS NOT NULL THEN
            RAISE EXCEPTION 'both ocr_jobs and menu_extraction_jobs exist as tables'
                USING HINT = 'jobq will not guess which one holds the truth: merge them into menu_extraction_jobs, drop ocr_jobs, and start jobq again';
        END IF;
        ALTER TABLE ocr_jobs RENAME TO menu_extraction_jobs;
    END IF;
END $$;

-- The legacy system's row-level NOTIFY triggers are replaced by jobq's
-- statement-level ones below.
DROP TRIGGER IF EXISTS menu_extraction_jobs_notify_insert ON menu_extraction_jobs;
DROP TRIGGER IF EXISTS menu_extraction_jobs_notify_update ON menu_extraction_jobs;
DROP VIEW IF EXISTS ocr_jobs;

-- 2. The seed's columns, then jobq's. A row written the old way (only id, user_id,
-- image_url, image_hash, status) is a valid job: every other column has a default.
CREATE TABLE IF NOT EXISTS menu_extraction_jobs (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    UUID,
    image_url  TEXT NOT NULL,
    image_hash VARCHAR(64),
    status     VARCHAR(20) NOT NULL DEFAULT 'queued'
);

ALTER TABLE menu_extraction_jobs
    ADD COLUMN IF NOT EXISTS image_hash       VARCHAR(64),
    ADD COLUMN IF NOT EXISTS schema_version   VARCHAR(20),
    ADD COLUMN IF NOT EXISTS prompt_version   VARCHAR(50),
    ADD COLUMN IF NOT EXISTS result           JSONB,
    ADD COLUMN IF NOT EXISTS error_message    TEXT,
    -- milliseconds from claim to completion, as the seed stored it
    ADD COLUMN IF NOT EXISTS processing_time  INTEGER,
    ADD COLUMN IF NOT EXISTS retry_count      INTEGER,
    ADD COLUMN IF NOT EXISTS token_usage      JSONB,
    ADD COLUMN IF NOT EXISTS confidence       REAL,
    ADD COLUMN IF NOT EXISTS uncertain_items  JSONB,
    ADD COLUMN IF NOT EXISTS superfluous_text JSONB,
    ADD COLUMN IF NOT EXISTS created_at       TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS completed_at     TIMESTAMPTZ,
    -- jobq's additions
    ADD COLUMN IF NOT EXISTS updated_at       TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS started_at       TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS version          BIGINT,
    ADD COLUMN IF NOT EXISTS attempt          INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS worker_id        TEXT,
    ADD COLUMN IF NOT EXISTS lease_id         UUID,
    ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS cancel_requested BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS retry_of_job_id  UUID,
    -- true for jobs created with force (and for older duplicates found in a legacy
    -- table): the one-live-job-per-submission rule does not cover them
    ADD COLUMN IF NOT EXISTS dedup_exempt     BOOLEAN NOT NULL DEFAULT false;

-- The seed's timestamps were TIMESTAMP (UTC wall clock); jobq stores instants.
DO $$
DECLARE
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['created_at', 'completed_at'] LOOP
        IF (SELECT data_type FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = 'menu_extraction_jobs'
              AND column_name = col) = 'timestamp without time zone' THEN
            EXECUTE format('ALTER TABLE menu_extraction_jobs ALTER COLUMN %I TYPE TIMESTAMPTZ USING %I AT TIME ZONE ''UTC''', col, col);
        END IF;
    END LOOP;
END $$;

-- Version: one sequence for every job, bumped on each change, so a watcher can
-- order a job's changes and resume after the last one it saw.
CREATE SEQUENCE IF NOT EXISTS menu_extraction_jobs_version_seq OWNED BY menu_extraction_jobs.version;

-- Fill what legacy rows lack, oldest first, then make the columns strict.
UPDATE menu_extraction_jobs
SET schema_version = COALESCE(schema_version, 'stage1'),
    prompt_version = COALESCE(prompt_version, 'v1.0'),
    retry_count    = COALESCE(retry_count, 0),
    created_at     = COALESCE(created_at, now()),
    updated_at     = COALESCE(updated_at, completed_at, created_at, now())
WHERE schema_version IS NULL OR prompt_version IS NULL OR retry_count IS NULL
   OR created_at IS NULL OR updated_at IS NULL;

UPDATE menu_extraction_jobs j
SET version = v.version
FROM (SELECT id, nextval('menu_extraction_jobs_version_seq') AS version
      FROM (SELECT id FROM menu_extraction_jobs WHERE version IS NULL ORDER BY created_at, id) ordered) v
WHERE j.id = v.id;

ALTER TABLE menu_extraction_jobs
    ALTER COLUMN id             SET DEFAULT gen_random_uuid(),
    ALTER COLUMN status         SET DEFAULT 'queued',
    ALTER COLUMN schema_version SET DEFAULT 'stage1',
    ALTER COLUMN schema_version SET NOT NULL,
    ALTER COLUMN prompt_version SET DEFAULT 'v1.0',
    ALTER COLUMN prompt_version SET NOT NULL,
    ALTER COLUMN retry_count    SET DEFAULT 0,
    ALTER COLUMN retry_count    SET NOT NULL,
    ALTER COLUMN created_at     SET DEFAULT now(),
    ALTER COLUMN created_at     SET NOT NULL,
    ALTER COLUMN updated_at     SET DEFAULT now(),
    ALTER COLUMN updated_at     SET NOT NULL,
    ALTER COLUMN version        SET DEFAULT nextval('menu_extraction_jobs_version_seq'),
    ALTER COLUMN version        SET NOT NULL;

-- New writes must be well-formed; legacy rows are kept as they are (NOT VALID).
ALTER TABLE menu_extraction_jobs
    ADD CONSTRAINT menu_extraction_jobs_status_known
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')) NOT VALID,
    ADD CONSTRAINT menu_extraction_jobs_image_hash_hex
        CHECK (image_hash ~ '^[0-9a-f]{64}$') NOT VALID,
    ADD CONSTRAINT menu_extraction_jobs_retry_of_job_id_fkey
        FOREIGN KEY (retry_of_job_id) REFERENCES menu_extraction_jobs (id) ON DELETE SET NULL;

-- 3. Indexes, each for a query that uses it.
-- Deduplication: at most one live (queued, processing, completed) job per user and
-- submission, so that concurrent identical submissions cannot create two. Older
-- duplicates in a legacy table are exempted first, newest kept.
UPDATE menu_extraction_jobs j
SET dedup_exempt = true
FROM (SELECT id, row_number() OVER (PARTITION BY user_id, image_hash, schema_version, prompt_version
                                    ORDER BY created_at DESC, id DESC) AS rank
      FROM menu_extraction_jobs
      WHERE image_hash IS NOT NULL AND NOT dedup_exempt
        AND status IN ('queued', 'processing', 'completed')) d
WHERE j.id = d.id AND d.rank > 1;

CREATE UNIQUE INDEX IF NOT EXISTS menu_extraction_jobs_live_submission
    ON menu_extraction_jobs (user_id, image_hash, schema_version, prompt_version)
    WHERE status IN ('queued', 'processing', 'completed') AND NOT dedup_exempt;

-- SubmitJob's lookup of the newest matching job, exempt ones included: every
-- condition is an index condition and the index order is the ORDER BY.
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_submission
    ON menu_extraction_jobs (user_id, image_hash, schema_version, prompt_version, created_at, id);

-- ListJobs (keyset on created_at, id, scanned backwards for newest first), and the
-- per-user usage counts over a time window.
CREATE INDEX IF NOT EXISTS menu_extraction_jobs_user_created
    ON menu_extraction_jobs (user_id, created_at, id);

-- 4. Triggers.
-- Every change bumps version and updated_at.
CREATE OR REPLACE FUNCTION jobq_touch_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('menu_extraction_jobs_version_seq');
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS menu_extraction_jobs_touch ON menu_extraction_jobs;
CREATE TRIGGER menu_extraction_jobs_touch
    BEFORE UPDATE ON menu_extraction_jobs
    FOR EACH ROW EXECUTE FUNCTION jobq_touch_job();

-- One NOTIFY per statement (not per row: Postgres serialises the commits of
-- notifying transactions, so per-row notifications would cap write throughput).
-- Channel menu_extraction_jobs; payload
--   {"op": "INSERT" | "UPDATE", "jobs": [[id, user_id, status, version], ...]}
-- with at most 40 jobs per notification to stay well under the 8000-byte limit.
-- The payload says what changed; readers take the row itself from the table.
CREATE OR REPLACE FUNCTION jobq_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk json;
BEGIN
    FOR chunk IN
        SELECT json_agg(json_build_array(id, user_id, status, version) ORDER BY version)
        FROM (SELECT id, user_id, status, version,
                     (row_number() OVER (ORDER BY version) - 1) / 40 AS part
              FROM changed_jobs) numbered
        GROUP BY part
    LOOP
        PERFORM pg_notify('menu_extraction_jobs',
                          json_build_object('op', TG_OP, 'jobs', chunk)::text);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER menu_extraction_jobs_notify_insert
    AFTER INSERT ON menu_extraction_jobs
    REFERENCING NEW TABLE AS changed_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobq_notify_jobs();

CREATE TRIGGER menu_extraction_jobs_notify_update
    AFTER UPDATE ON menu_extraction_jobs
    REFERENCING NEW TABLE AS changed_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobq_notify_jobs();

-- 5. Legacy readers (and simple writers: the view is updatable) keep working.
CREATE VIEW ocr_jobs AS
SELECT id, user_id, image_url, image_hash, status, schema_version, prompt_version,
       result, error_message, processing_time, retry_count, token_usage, confidence,
       uncertain_items, superfluous_text, created_at, completed_at
FROM menu_extraction_jobs;

COMMENT ON VIEW ocr_jobs IS 'Compatibility view for readers of the legacy ocr_jobs table; the data lives in menu_extraction_jobs';
