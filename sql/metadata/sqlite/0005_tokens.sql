-- Bearer tokens issued by `pgshift token create` or POST /api/v1/tokens: who holds them and
-- what they may do, so they can be listed and revoked. The token itself is never stored (it
-- is signed, not looked up); `id` is its `jti` claim.

CREATE TABLE token (
    id          TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL,
    -- Who issued it: the subject of the admin token that asked, or 'cli' for the command line.
    created_by  TEXT NOT NULL,
    -- RFC 3339 UTC timestamps.
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    -- Set once, when revoked; every instance sharing this store refuses the token from then on.
    revoked_at  TEXT
);

CREATE INDEX token_created ON token (created_at);
