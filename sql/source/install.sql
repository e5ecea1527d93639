-- Change capture on the source database, one schema per migration (@schema@ is replaced by
-- the schema name, already quoted). Dropping the schema with CASCADE removes every trigger too.

CREATE SCHEMA @schema@;

-- Event ids: NO cache, so that ids follow the order in which statements finished across
-- sessions; two changes of one row are always ordered because the row lock serialises them.
CREATE SEQUENCE @schema@.event_id_seq NO CYCLE;

-- Which of the three event tables takes new events. Triggers read it as a relation
-- (SELECT last_value), which is not subject to MVCC: a rotation is seen by every session at
-- once, so a transaction that started before a rotation cannot keep writing the old table.
CREATE SEQUENCE @schema@.generation_seq MINVALUE 0 START 0;
SELECT setval('@schema@.generation_seq', 0, true);

-- The queue. ev_op: 'U' = the row now is ev_data (insert or update), 'D' = the row ev_data is
-- gone, 'T' = the relation named in ev_data was truncated ('K' and 'A': table_capture.sql,
-- engine/partitions.rs; 'P', 'W', 'E': a row sent in parts, capture_row below). Rows are
-- PostgreSQL's own record text (see table_capture.sql), which round-trips every type. Three partitions rotate, PgQ
-- style: the oldest is TRUNCATEd once the worker is past it, so cleanup never relies on
-- DELETE + VACUUM.
CREATE TABLE @schema@.event (
    ev_gen   smallint NOT NULL,
    ev_id    bigint   NOT NULL DEFAULT nextval('@schema@.event_id_seq'),
    ev_txid  bigint   NOT NULL,
    ev_table integer  NOT NULL,
    ev_op    "char"   NOT NULL,
    ev_data  text
) PARTITION BY LIST (ev_gen);
CREATE TABLE @schema@.event_0 PARTITION OF @schema@.event FOR VALUES IN (0);
CREATE TABLE @schema@.event_1 PARTITION OF @schema@.event FOR VALUES IN (1);
CREATE TABLE @schema@.event_2 PARTITION OF @schema@.event FOR VALUES IN (2);
CREATE INDEX ON @schema@.event (ev_txid);

-- One row per generation: when it stopped taking events and retired_xmax, a txid assigned
-- after the switch away from it, so above every transaction that wrote it (engine/rotation.rs
-- says why). Once every transaction below retired_xmax is applied, the table can be truncated.
CREATE TABLE @schema@.generation (
    gen          smallint PRIMARY KEY,
    retired_xmax bigint,
    retired_at   timestamptz,
    truncated    boolean NOT NULL DEFAULT false
);
INSERT INTO @schema@.generation (gen, truncated) VALUES (0, false), (1, true), (2, true);

-- Ticks: a batch is every event whose transaction is visible in one tick's snapshot and not
-- in the previous one's.
CREATE TABLE @schema@.tick (
    tick_id        bigint PRIMARY KEY,
    tick_snapshot  txid_snapshot NOT NULL,
    tick_event_seq bigint NOT NULL,
    tick_time      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The partitions of each partitioned table as pgshift last saw them (engine/partitions.rs):
-- one that appears or goes is noticed against this list. bound: the partition constraint's
-- text, which says which rows left with a partition that went. attached: the xmin of its
-- pg_inherits row, which a DETACH and ATTACH again (same table, same oid) changes.
CREATE TABLE @schema@.partition (
    relid    oid PRIMARY KEY,
    table_no integer NOT NULL,
    name     text NOT NULL,
    leaf     boolean NOT NULL,
    bound    text,
    attached text
);
-- Partitions the capture (table_capture.sql) or the copy wrote or read rows of before the
-- source watch followed them, so that one created and dropped between two looks still has its
-- rows taken off the target. No key: an application's transaction never waits on another's
-- note (duplicates are harmless; the watch reads them once).
CREATE TABLE @schema@.partition_seen (
    relid    oid NOT NULL,
    table_no integer NOT NULL,
    name     text NOT NULL,
    bound    text
);

CREATE FUNCTION @schema@.tick() RETURNS bigint LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @schema@.tick (tick_id, tick_snapshot, tick_event_seq)
    SELECT coalesce(max(tick_id), 0) + 1,
           pg_catalog.txid_current_snapshot(),
           (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM @schema@.event_id_seq)
      FROM @schema@.tick
    RETURNING tick_id
$$;

-- Marks the end of a captured statement (statement_triggers.sql) with the time of the client
-- statement it belongs to, in a transaction-local setting named after the migration (a rolled
-- back savepoint restores it). A row capture that finds its own client statement's mark knows
-- that another captured statement ended inside it: a nested one (a function the statement
-- called, a trigger's statement), which may have changed rows whose captures are still queued
-- (table_capture.sql). The time is written as whole microseconds since the epoch, which no
-- session setting changes. Not SECURITY DEFINER: it touches no table. (It marks pgshift's own
-- sessions' statements too, which costs them a setting and changes nothing: capture records
-- nothing of theirs.)
CREATE FUNCTION @schema@.statement_bound() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    PERFORM pg_catalog.set_config('pgshift.@tag@_ended',
        @statement_mark@, true);
    RETURN NULL;
END
$f$;

-- Appends one event to the current event table (the rule the capture triggers follow, through
-- the partitioned parent): for the rare paths below and the source watch.
CREATE FUNCTION @schema@.add_event(table_no integer, op "char", data text) RETURNS void LANGUAGE sql
    SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO @schema@.event (ev_gen, ev_txid, ev_table, ev_op, ev_data)
    VALUES ((pg_catalog.pg_sequence_last_value('@schema@.generation_seq'::pg_catalog.regclass) % 3)::smallint,
            pg_catalog.txid_current(), table_no, op, data)
$$;

-- Records row r of a migrated table (the row as it is now, read by key) as a 'U' event, or,
-- when its text form cannot be built, in parts. Record output doubles every quote and
-- backslash, so a row holding a value well below PostgreSQL's 1 GB field limit (540 MB of
-- quotes) can have a text form over 1 GB; the application's write must go on all the same
-- (table_capture.sql calls this only when its own try failed). In parts, each column's value
-- travels on its own: its text form (bytea: its bytes), as UTF-8, cut into pieces of
-- @piece_bytes@ bytes, each a 'P' event "<tag> <column> <piece> <t|b>" + newline + base64, then
-- one 'W' event "<tag>" telling the target to write the row from its parts (apply/wide.rs). A
-- column with no piece is NULL; generated columns are computed by the target. Columns are
-- numbered by position, which partitions share with their parent (checked while running). A
-- value whose own text form cannot be built either (a bytea is sent as bytes, so this is a
-- value of another type whose text passes 1 GB) becomes an 'E' event: `key_row` (the row's
-- text with only its key, as a 'D' carries it), a newline, and words naming the row (`what`)
-- and the column. The target cannot be given the row: the migration stops on that table rather
-- than differ (apply.rs says what a resync does with it).
CREATE FUNCTION @schema@.capture_row(table_no integer, r anyelement, what text, key_row text) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    data text;
    tag bigint;
    col record;
    value bytea;
    size bigint;
    piece integer;
BEGIN
    BEGIN
        data := r::text;
    EXCEPTION WHEN OTHERS THEN
        data := NULL;
    END;
    IF data IS NOT NULL THEN
        PERFORM @schema@.add_event(table_no, 'U', data);
        RETURN;
    END IF;
    tag := pg_catalog.nextval('@schema@.event_id_seq');
    FOR col IN
        WITH RECURSIVE columns AS (
            SELECT a.attname, a.attgenerated <> '' AS generated, a.atttypid AS type,
                   (pg_catalog.row_number() OVER (ORDER BY a.attnum) - 1)::integer AS i
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = (SELECT t.typrelid FROM pg_catalog.pg_type t WHERE t.oid = pg_catalog.pg_typeof(r))
               AND a.attnum > 0 AND NOT a.attisdropped),
        base AS (
            SELECT c.i, c.type FROM columns c
            UNION ALL
            SELECT b.i, t.typbasetype FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.type
             WHERE t.typtype = 'd')
        SELECT c.attname, c.i, c.generated,
               EXISTS (SELECT 1 FROM base b WHERE b.i = c.i AND b.type = 'pg_catalog.bytea'::pg_catalog.regtype) AS raw
          FROM columns c ORDER BY c.i
    LOOP
        CONTINUE WHEN col.generated;
        BEGIN
            IF col.raw THEN
                EXECUTE pg_catalog.format('SELECT ($1).%I::pg_catalog.bytea', col.attname)
                   INTO value USING r;
            ELSE
                EXECUTE pg_catalog.format('SELECT pg_catalog.convert_to(($1).%I::pg_catalog.text, ''UTF8'')', col.attname)
                   INTO value USING r;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            PERFORM @schema@.add_event(table_no, 'E', key_row || E'\n'
                || pg_catalog.format('%s: the text form of column %I cannot be built (%s)', what, col.attname, SQLERRM));
            RETURN;
        END;
        CONTINUE WHEN value IS NULL;
        size := pg_catalog.octet_length(value);
        piece := 0;
        LOOP
            PERFORM @schema@.add_event(table_no, 'P',
                pg_catalog.format('%s %s %s %s', tag, col.i, piece, CASE WHEN col.raw THEN 'b' ELSE 't' END)
                || E'\n'
                || pg_catalog.encode(pg_catalog.substr(value, piece * @piece_bytes@ + 1, @piece_bytes@), 'base64'));
            piece := piece + 1;
            EXIT WHEN piece::bigint * @piece_bytes@ >= size;
        END LOOP;
        value := NULL;
    END LOOP;
    PERFORM @schema@.add_event(table_no, 'W', tag::text);
END
$f$;
