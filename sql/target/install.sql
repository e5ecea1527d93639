-- pgshift's bookkeeping on the target, one schema per migration (@schema@ is replaced by the
-- schema name, already quoted). It lives next to the replicated tables so that a batch and the
-- record of having applied it commit in one transaction: a crash loses or repeats nothing.

CREATE SCHEMA @schema@;

-- The last tick whose batch is applied. Exactly one row; the worker updates it in the same
-- transaction as the batch's changes.
CREATE TABLE @schema@.applied (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    tick_id        bigint      NOT NULL,
    -- txid_snapshot text (xmin:xmax:xip,...) of that tick on the source.
    tick_snapshot  text        NOT NULL,
    tick_time      timestamptz NOT NULL,
    -- The source's event sequence at the tick, to report pending events.
    tick_event_seq bigint      NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    events_applied bigint      NOT NULL DEFAULT 0
);

-- Each replicated table's copy state. copy_position holds the last copied key as literals the
-- source quoted itself, so an interrupted copy resumes after it; copy_epoch changes when the
-- copy has to start over (a TRUNCATE on the source), which makes a running copy drop its chunk.
CREATE TABLE @schema@.table_state (
    table_no           integer     PRIMARY KEY,
    table_name         text        NOT NULL,
    state              text        NOT NULL
                       CHECK (state IN ('pending', 'copying', 'catching_up', 'synced')),
    copy_epoch         integer     NOT NULL DEFAULT 0,
    copy_position      text[],
    rows_copied        bigint      NOT NULL DEFAULT 0,
    rows_estimated     bigint,
    copy_started_at    timestamptz,
    copy_finished_at   timestamptz,
    -- A copied table is synced once the worker has applied this tick.
    catchup_until_tick bigint
);

-- Keys the worker deleted while a table was still copying live in one typed table per
-- replicated table (tombstone_<no>), created next to the table's row type by the engine
-- (engine/row_format.rs), so they compare with the key's own equality.
