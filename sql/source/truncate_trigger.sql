-- The TRUNCATE trigger of one relation (@relation@, quoted): the replicated table itself or one
-- of its partitions. Statement triggers are not cloned to partitions, and TRUNCATE of a
-- partition fires only that partition's triggers, so each partition carries its own; the ticker
-- adds it to partitions created later.
CREATE TRIGGER @trigger@ AFTER TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@();
