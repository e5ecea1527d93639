-- The audit trail: one row per state-changing API request (POST, PUT, PATCH, DELETE under
-- /api/v1), whatever its outcome. Request bodies are never stored: they may hold DSNs with
-- passwords.

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- When the request arrived, RFC 3339 UTC with microseconds (fixed width: sorts as text).
    at          TEXT NOT NULL,
    -- The token's subject, or 'anonymous' for a request refused before authentication.
    actor       TEXT NOT NULL,
    -- The token's jti and role; NULL when anonymous.
    token_id    TEXT,
    role        TEXT,
    -- What was done, e.g. migration.start; method and route pattern as requested.
    action      TEXT NOT NULL,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    -- The object named in the path (or created): 'cluster' or 'migration', and its name.
    object_kind TEXT,
    object_name TEXT,
    client_ip   TEXT,
    -- The HTTP status, and the error code of a 4xx or 5xx response.
    status      INTEGER NOT NULL,
    error_code  TEXT
);

CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_object ON audit (object_kind, object_name);
