-- Dashboard users and their sessions. Passwords are argon2id hashes (PHC strings); a session is
-- stored by the SHA-256 of its cookie value, so reading this database does not yield a usable
-- cookie. Times are Unix seconds, so expiry compares as integers.

CREATE TABLE pgshift_meta.app_user (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    -- viewer, operator or admin.
    role          text NOT NULL,
    created_at    bigint NOT NULL
);

CREATE TABLE pgshift_meta.user_session (
    token_hash text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES pgshift_meta.app_user(id) ON DELETE CASCADE,
    -- Sent back in every state-changing form; compared with the submitted one.
    csrf_token text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);

CREATE INDEX user_session_expires ON pgshift_meta.user_session (expires_at);
