-- The cutover's freeze on the source (@schema@: the migration's schema, quoted; @message@ and
-- @hint@: quoted literals; @deadline@: a float8 literal, seconds since the epoch on the
-- source's own clock, or 'infinity'). Each CREATE TRIGGER (freeze_table.sql) takes a SHARE ROW
-- EXCLUSIVE lock, which waits for the table's writers to finish and holds new ones back (reads
-- go on) until commit; from then on every write fails with the message. Only the TRIGGER
-- privilege is needed, no superuser and no ownership of the tables. The function lives in
-- pgshift's schema: dropping it with CASCADE (or removing the migration) lifts the freeze.
--
-- While a cutover runs, the freeze has a deadline the source enforces itself: past it, writes
-- go through again (and are captured as before), so a pgshift that died cannot hold production
-- frozen. The finish replaces the function (CREATE OR REPLACE: same triggers, no lock) with
-- the permanent one, whose deadline is 'infinity' and whose message says the database moved.
--
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
    IF pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) >= @deadline@ THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'read_only_sql_transaction',
        MESSAGE = format('%I.%I is frozen: %s', TG_TABLE_SCHEMA, TG_TABLE_NAME, @message@),
        HINT = @hint@;
END
$f$;
