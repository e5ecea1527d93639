-- Operations: long-running actions on a migration (cutover, verify) with visible steps. Kept
-- after the migration is removed (no foreign key): they are its history.

CREATE TABLE operation (
    id             TEXT PRIMARY KEY,
    migration_id   TEXT NOT NULL,
    migration_name TEXT NOT NULL,
    -- cutover or verify.
    kind           TEXT NOT NULL,
    -- running, succeeded, failed or aborted.
    state          TEXT NOT NULL,
    -- The token subject that asked for it.
    requested_by   TEXT NOT NULL,
    -- JSON: the request's options (never secrets), the steps so far, and the result.
    request        TEXT NOT NULL,
    steps          TEXT NOT NULL,
    result         TEXT,
    error          TEXT,
    -- RFC 3339 UTC with microseconds (fixed width: sorts as text).
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    finished_at    TEXT
);

CREATE INDEX operation_migration ON operation (migration_name, created_at);
CREATE INDEX operation_state ON operation (state);
