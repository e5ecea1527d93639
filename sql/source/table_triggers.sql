-- The triggers for one relation (@relation@, quoted): the replicated table itself, or one of
-- its partitions (a statement aimed at a partition fires only the partition's triggers).
CREATE TRIGGER @trigger@_ins AFTER INSERT ON @relation@ REFERENCING NEW TABLE AS pgshift_new
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@_insert();
CREATE TRIGGER @trigger@_upd AFTER UPDATE ON @relation@ REFERENCING OLD TABLE AS pgshift_old NEW TABLE AS pgshift_new
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@_update();
CREATE TRIGGER @trigger@_del AFTER DELETE ON @relation@ REFERENCING OLD TABLE AS pgshift_old
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@_delete();
CREATE TRIGGER @trigger@_trunc AFTER TRUNCATE ON @relation@
    FOR EACH STATEMENT EXECUTE FUNCTION @schema@.capture_@no@_truncate();
