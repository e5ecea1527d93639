-- The statement triggers of one relation (@relation@, quoted): the replicated table itself or
-- one of its partitions. Statement triggers are not cloned to partitions, and a statement aimed
-- at a partition fires only that partition's, so each partition carries its own; the source
-- watch adds them to partitions created later.
--
-- TRUNCATE is captured as an event. The other two count the captured statements still running
-- in this transaction: a row capture that fires while two are open belongs to a statement
-- nested in another (a function called by it), whose queued captures may hold rows older than
-- the ones just captured (see table_capture.sql).
CREATE TRIGGER @truncate@ AFTER TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@();
CREATE TRIGGER @begin@ BEFORE INSERT OR UPDATE OR DELETE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.statement_bound();
CREATE TRIGGER @end@ AFTER INSERT OR UPDATE OR DELETE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.statement_bound();
