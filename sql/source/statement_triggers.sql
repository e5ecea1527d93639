-- The statement triggers of one relation (@relation@, quoted): the replicated table itself or
-- one of its partitions. Statement triggers are not cloned to partitions, and a statement aimed
-- at a partition fires only that partition's, so each partition carries its own; the source
-- watch adds them to partitions created later.
--
-- TRUNCATE is captured as an event. The end of every other statement is marked (see
-- statement_bound() in install.sql): a row capture that fires after a statement nested in its
-- own ended may hold a row older than the one just captured (see table_capture.sql).
CREATE TRIGGER @truncate@ AFTER TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@();
CREATE TRIGGER @end@ AFTER INSERT OR UPDATE OR DELETE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.statement_bound();
