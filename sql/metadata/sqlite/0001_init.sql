-- pgshift's own metadata: the clusters it can reach and the migrations it drives.
-- Runtime progress (applied tick, per-table copy position) lives on the target database,
-- in the same transactions as the data it describes; this store keeps definitions and intent.

CREATE TABLE cluster (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    dsn            TEXT NOT NULL,
    server_version TEXT NOT NULL,
    created_at     TEXT NOT NULL
);

CREATE TABLE migration (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    source_cluster  TEXT NOT NULL REFERENCES cluster(id),
    source_database TEXT NOT NULL,
    target_cluster  TEXT NOT NULL REFERENCES cluster(id),
    target_database TEXT NOT NULL,
    -- JSON: the patterns the user gave (NULL = every table) and the tables they resolved to.
    table_patterns  TEXT,
    tables          TEXT NOT NULL,
    -- What the operator asked for: created, running, paused.
    desired_state   TEXT NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
