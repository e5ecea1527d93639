-- How a migration's target tables come to exist (issue 10): 'create' (pgshift builds them from
-- the source's schema) or 'existing' (the operator created them). Migrations made before this
-- column existed found their tables in place.
ALTER TABLE migration ADD COLUMN schema_mode TEXT NOT NULL DEFAULT 'existing';
