-- Operations: long-running actions on a migration (cutover, verify) with visible steps. Kept
-- after the migration is removed (no foreign key): they are its history.

CREATE TABLE pgshift_meta.operation (
    id             uuid PRIMARY KEY,
    migration_id   uuid NOT NULL,
    migration_name text NOT NULL,
    -- cutover or verify.
    kind           text NOT NULL,
    -- running, succeeded, failed or aborted.
    state          text NOT NULL,
    -- The token subject that asked for it.
    requested_by   text NOT NULL,
    -- The request's options (never secrets), the steps so far, and the result.
    request        jsonb NOT NULL,
    steps          jsonb NOT NULL,
    result         jsonb,
    error          text,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    finished_at    timestamptz
);

CREATE INDEX operation_migration ON pgshift_meta.operation (migration_name, created_at);
CREATE INDEX operation_state ON pgshift_meta.operation (state);
