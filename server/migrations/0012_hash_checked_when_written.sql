-- The image hash's rule (64 lowercase hex digits) is checked when a hash is
-- written, not at every update of a job.
--
-- As a CHECK constraint (migrations 0001 and 0009, NOT VALID so that legacy rows
-- were kept) it was evaluated by every update, whatever the update changed:
--
-- - A legacy job whose hash broke the rule (a legacy writer's uppercase hash,
--   say) could not be claimed, completed, failed or cancelled: the claim that
--   picked it failed whole, with every other job of its batch, and since claims
--   take the oldest queued jobs first, every claim after it failed too.
-- - It was 6% of Postgres's CPU in issue 8's drain (perf: `ltrim` compares each
--   of the 64 characters with the set, twice per job), spent on rows whose hash
--   the update did not touch.
--
-- The trigger below refuses exactly what the constraint refused, and only in
-- rows whose hash is written: every insert, and every update that sets
-- image_hash (jobq's own updates never do). Its WHEN clause is evaluated
-- without a function call; the function runs only to refuse. The refusal keeps
-- the constraint's SQLSTATE (23514, check_violation), name and message. A NULL
-- hash passes, as before.
--
-- The rule is written as a regular expression in the "C" collation, where
-- [0-9a-f] is those 16 characters by code point: 0.37 µs a hash against 3.2 for
-- the constraint's `ltrim(image_hash, '0123456789abcdef') = ''` (100,000
-- hashes), which decides the same for every hash (checked on every character
-- up to U+1116F, and on uppercase, short, long, empty, space, newline and
-- multibyte examples). Without the collation, or with {64} in place of the
-- length test, the expression is slower than ltrim (7.1 µs for
-- '^[0-9a-f]{64}$').
CREATE OR REPLACE FUNCTION jobq_refuse_image_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'new row for relation "%" violates check constraint "menu_extraction_jobs_image_hash_hex"',
            TG_TABLE_NAME
        USING ERRCODE = 'check_violation',
              CONSTRAINT = 'menu_extraction_jobs_image_hash_hex',
              SCHEMA = TG_TABLE_SCHEMA,
              TABLE = TG_TABLE_NAME,
              COLUMN = 'image_hash',
              DETAIL = format('image_hash must be 64 lowercase hex digits (a SHA-256), not %L',
                              NEW.image_hash);
END
$$;

DROP TRIGGER IF EXISTS menu_extraction_jobs_image_hash_hex ON menu_extraction_jobs;
CREATE TRIGGER menu_extraction_jobs_image_hash_hex
    BEFORE INSERT OR UPDATE OF image_hash ON menu_extraction_jobs
    FOR EACH ROW
    WHEN (NOT (octet_length(NEW.image_hash) = 64
               AND NEW.image_hash COLLATE "C" ~ '^[0-9a-f]*$'))
    EXECUTE FUNCTION jobq_refuse_image_hash();

ALTER TABLE menu_extraction_jobs DROP CONSTRAINT IF EXISTS menu_extraction_jobs_image_hash_hex;
