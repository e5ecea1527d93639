-- What pgshift builds on the target after the copy when it creates the target's schema (schema
-- "create"), one row per object of the source's schema dump, in the dump's order; @schema@ is
-- pgshift's bookkeeping schema, already quoted. Nothing here exists for schema "existing".

-- The session settings pg_restore writes its statements for (search_path empty: every name in
-- them is qualified).
CREATE TABLE @schema@.schema_preamble (
    line_no   integer PRIMARY KEY,
    statement text    NOT NULL
);

CREATE TABLE @schema@.schema_object (
    object_no integer     PRIMARY KEY,
    -- pg_dump's kind (INDEX, FK CONSTRAINT, TRIGGER, VIEW, ACL, …; VALIDATE for a foreign key's
    -- validation) and the object's name as people read it.
    kind      text        NOT NULL,
    name      text        NOT NULL,
    -- The migrated tables (table_state.table_no) it waits for, and for what.
    tables    integer[]   NOT NULL,
    wait_for  text        NOT NULL CHECK (wait_for IN ('copied', 'synced')),
    statement text        NOT NULL,
    state     text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'built', 'failed')),
    -- Why the last attempt failed (state failed); failed objects are tried again when the
    -- migration's run starts again.
    error     text,
    built_at  timestamptz
);
