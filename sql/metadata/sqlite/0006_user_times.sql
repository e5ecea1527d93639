-- Users' and sessions' times become RFC 3339 text (UTC, microseconds, fixed width, so text order
-- is time order), as every other table's are (they were Unix seconds): one time representation
-- in the store.
--
-- SQLite cannot change a column's type, so both tables are rebuilt. The sessions wait in a
-- temporary table meanwhile: while user_session exists, dropping app_user would cascade to it.

CREATE TEMP TABLE session_copy AS SELECT * FROM user_session;
DROP TABLE user_session;

CREATE TABLE app_user_new (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    -- viewer, operator or admin.
    role          TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
INSERT INTO app_user_new (id, name, password_hash, role, created_at)
    SELECT id, name, password_hash, role,
           strftime('%Y-%m-%dT%H:%M:%S', created_at, 'unixepoch') || '.000000Z'
      FROM app_user;
DROP TABLE app_user;
ALTER TABLE app_user_new RENAME TO app_user;

CREATE TABLE user_session (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    -- Sent back in every state-changing form; compared with the submitted one.
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
INSERT INTO user_session (token_hash, user_id, csrf_token, created_at, expires_at)
    SELECT token_hash, user_id, csrf_token,
           strftime('%Y-%m-%dT%H:%M:%S', created_at, 'unixepoch') || '.000000Z',
           strftime('%Y-%m-%dT%H:%M:%S', expires_at, 'unixepoch') || '.000000Z'
      FROM session_copy;
DROP TABLE session_copy;

CREATE INDEX user_session_expires ON user_session (expires_at);
