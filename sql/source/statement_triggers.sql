-- The statement triggers of one relation (@relation@, quoted): the replicated table itself or
-- one of its partitions. Statement triggers are not cloned to partitions, and a statement aimed
-- at a partition fires only that partition's, so each partition carries its own; the source
-- watch adds them to partitions created later.
--
-- TRUNCATE is captured as an event. The end of every other statement is marked (see
-- statement_bound() in install.sql): a row capture that fires after a statement nested in its
-- own ended may hold a row older than the one just captured (see table_capture.sql).
--
-- The end mark is set by a function of this table's own (the body of statement_bound() in
-- install.sql): removing the table from the migration drops its functions with CASCADE, which
-- takes every trigger of the table with them without needing the table's owner. Created again
-- (same body) for each relation, so a partition that joins later finds it.
CREATE OR REPLACE FUNCTION @schema@.statement_bound_@no@() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    PERFORM pg_catalog.set_config('pgshift.@tag@_ended',
        @statement_mark@, true);
    RETURN NULL;
END
$f$;
CREATE TRIGGER @truncate@ AFTER TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@();
CREATE TRIGGER @end@ AFTER INSERT OR UPDATE OR DELETE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.statement_bound_@no@();
