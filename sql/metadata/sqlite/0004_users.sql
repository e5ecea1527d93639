-- Dashboard users and their sessions. Passwords are argon2id hashes (PHC strings); a session is
-- stored by the SHA-256 of its cookie value, so reading this database does not yield a usable
-- cookie. Times are Unix seconds, so expiry compares as integers.

CREATE TABLE app_user (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    -- viewer, operator or admin.
    role          TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE user_session (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    -- Sent back in every state-changing form; compared with the submitted one.
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX user_session_expires ON user_session (expires_at);
