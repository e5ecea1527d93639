-- The cutover's freeze on the source (@schema@: the migration's schema, quoted; @message@: a
-- quoted literal naming the new server). Each CREATE TRIGGER (freeze_table.sql) takes a
-- SHARE ROW EXCLUSIVE lock, which waits for the table's writers to finish and holds new ones
-- back (reads go on) until commit; from then on every write fails with the message. Only the
-- TRIGGER privilege is needed, no superuser and no ownership of the tables. The function lives
-- in pgshift's schema: dropping it with CASCADE (or removing the migration) lifts the freeze.
-- Not SECURITY DEFINER: it only raises. The triggers fire for sessions with
-- session_replication_role = replica too (restore jobs, other replication tools) where
-- pgshift's role owns the table (ENABLE ALWAYS; the gates name the tables where it does not).
-- pgshift's own sessions (a reverse migration applying changes here) are let through.

CREATE OR REPLACE FUNCTION @schema@.cutover_freeze() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF pg_catalog.current_setting('pgshift.replicating', true) <> '' AND pg_catalog.obj_description('@schema@'::pg_catalog.regnamespace, 'pg_namespace') IN (SELECT 'pgshift session marker sha256:' || pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(t, 'UTF8')), 'hex') FROM pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.current_setting('pgshift.replicating', true), ' ')) AS t) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'read_only_sql_transaction',
        MESSAGE = format('%I.%I is frozen: %s', TG_TABLE_SCHEMA, TG_TABLE_NAME, @message@),
        HINT = 'point the application at the new server';
END
$f$;
