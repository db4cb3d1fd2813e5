-- API keys. The secret is never stored: only its SHA-256 digest, compared in
-- constant time against the digest of the presented secret. A key is looked up by
-- its id, which the key's text carries in the clear (jobq_<id>_<secret>).
CREATE TABLE IF NOT EXISTS api_keys (
    id           uuid PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    role         text        NOT NULL CHECK (role IN ('admin', 'service', 'user', 'worker')),
    -- The user a 'user' key acts for; only 'user' keys have one.
    user_id      uuid        CHECK ((role = 'user') = (user_id IS NOT NULL)),
    digest       bytea       NOT NULL CHECK (octet_length(digest) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
