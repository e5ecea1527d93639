-- The highest table number a migration ever gave out (issue 10: tables added to and removed from
-- a running migration). Events in the source's queue carry the number, so a removed table's
-- number is never given to another; NULL for migrations made before tables could be removed
-- (their highest number is among their tables).
ALTER TABLE migration ADD COLUMN last_table_no INTEGER;
