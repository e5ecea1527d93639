-- The audit trail: one row per state-changing API request (POST, PUT, PATCH, DELETE under
-- /api/v1), whatever its outcome. Request bodies are never stored: they may hold DSNs with
-- passwords.

CREATE TABLE pgshift_meta.audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- When the request arrived.
    at          timestamptz NOT NULL,
    -- The token's subject, or 'anonymous' for a request refused before authentication.
    actor       text NOT NULL,
    -- The token's jti and role; NULL when anonymous.
    token_id    text,
    role        text,
    -- What was done, e.g. migration.start; method and route pattern as requested.
    action      text NOT NULL,
    method      text NOT NULL,
    route       text NOT NULL,
    -- The object named in the path (or created): 'cluster' or 'migration', and its name.
    object_kind text,
    object_name text,
    client_ip   text,
    -- The HTTP status, and the error code of a 4xx or 5xx response.
    status      integer NOT NULL,
    error_code  text
);

CREATE INDEX audit_at ON pgshift_meta.audit (at);
CREATE INDEX audit_object ON pgshift_meta.audit (object_kind, object_name);
