-- pgshift's own metadata in PostgreSQL: the same tables as the SQLite store, for several pgshift
-- instances sharing one store. Everything lives in the schema pgshift_meta, which pgshift creates
-- before running this (sqlx's _sqlx_migrations table lands there too, through search_path).
-- Runtime progress (applied tick, per-table copy position) lives on the target database,
-- in the same transactions as the data it describes; this store keeps definitions and intent.

CREATE TABLE pgshift_meta.cluster (
    id             uuid PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    dsn            text NOT NULL,
    server_version text NOT NULL,
    created_at     timestamptz NOT NULL
);

CREATE TABLE pgshift_meta.migration (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    source_cluster  uuid NOT NULL REFERENCES pgshift_meta.cluster(id),
    source_database text NOT NULL,
    target_cluster  uuid NOT NULL REFERENCES pgshift_meta.cluster(id),
    target_database text NOT NULL,
    -- The patterns the user gave (NULL = every table) and the tables they resolved to.
    table_patterns  jsonb,
    tables          jsonb NOT NULL,
    -- What the operator asked for: created, running, paused.
    desired_state   text NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Deleting a cluster looks for migrations that use it (SQLite needs no such index at its size;
-- PostgreSQL does not index foreign keys by itself).
CREATE INDEX migration_source_cluster ON pgshift_meta.migration (source_cluster);
CREATE INDEX migration_target_cluster ON pgshift_meta.migration (target_cluster);
