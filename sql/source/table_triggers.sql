-- The row trigger of one replicated table (@relation@, quoted). On a partitioned table it is
-- cloned to every partition, including partitions created or attached later.
-- The name starts with '!' so that it sorts before every ordinary trigger name (and before the
-- foreign keys' "RI_ConstraintTrigger_…"): AFTER row triggers fire in name order, and capture
-- must record a row before another trigger's nested statement rewrites it.
CREATE TRIGGER @trigger@ AFTER INSERT OR UPDATE OR DELETE ON @relation@
    FOR EACH ROW EXECUTE FUNCTION @schema@.capture_@no@();
