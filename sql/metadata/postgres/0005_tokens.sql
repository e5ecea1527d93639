-- Bearer tokens issued by `pgshift token create` or POST /api/v1/tokens: who holds them and
-- what they may do, so they can be listed and revoked. The token itself is never stored (it
-- is signed, not looked up); `id` is its `jti` claim.

CREATE TABLE pgshift_meta.token (
    id          uuid PRIMARY KEY,
    subject     text NOT NULL,
    role        text NOT NULL,
    -- Who issued it: the subject of the admin token that asked, or 'cli' for the command line.
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- Set once, when revoked; every instance sharing this store refuses the token from then on.
    revoked_at  timestamptz
);

CREATE INDEX token_created ON pgshift_meta.token (created_at);
