-- The freeze trigger for one relation (@relation@, quoted), see freeze.sql. A statement-level
-- BEFORE trigger: it fires once per statement, before any row is touched, also for TRUNCATE.
CREATE TRIGGER @trigger@ BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.cutover_freeze();
