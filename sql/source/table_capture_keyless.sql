-- Capture for one table without a key (@table@, quoted): whole-row identity, as PostgreSQL's
-- REPLICA IDENTITY FULL. Installed inside the migration's schema, with the same triggers as a
-- keyed table (table_triggers.sql, statement_triggers.sql).
--
-- Each change is stated as what it does to the table seen as a multiset of rows: 'U' adds one
-- row equal to ev_data, 'D' removes one row equal to ev_data; an update is both, old row first.
-- The target applies a batch's events per table as their net effect (apply/keyless.rs): adding
-- and removing rows commute, so the order in which AFTER triggers fire does not matter. That is
-- why, unlike the keyed capture (table_capture.sql), nothing here re-reads a row after a nested
-- statement changed it: OLD and NEW are the very versions the statement removed and wrote, and
-- a nested change of the same row is stated with its own OLD and NEW, whatever fires first.
--
-- A row whose text form cannot be built (over 1 GB) cannot be named without its whole value:
-- an 'E' event says so and the target stops on the table (a keyed table would be sent in parts).
--
-- SECURITY DEFINER and the pinned search_path and settings: as in table_capture.sql.

CREATE FUNCTION @schema@.capture_@no@() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET standard_conforming_strings = on
    @settings@
AS $f$
DECLARE
    -- Up to two events, in order: (op1, data1) then (op2, data2).
    op1 "char";
    data1 text;
    op2 "char";
    data2 text;
BEGIN
    -- pgshift's own sessions (apply, copy, repair) are never captured (see table_capture.sql).
    IF pg_catalog.current_setting('pgshift.replicating', true) <> '' THEN
        IF pg_catalog.strpos(' ' || pg_catalog.current_setting('pgshift.replicating', true) || ' ',
                             ' ' || (SELECT m.token FROM @schema@.marker m LIMIT 1) || ' ') > 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        -- A table detached from this one keeps its statement triggers (removing them needs its
        -- owner): its truncates are none of ours.
        IF TG_RELID <> @table_literal@::pg_catalog.regclass
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_partition_tree(@table_literal@::pg_catalog.regclass) p
                            WHERE p.relid = TG_RELID) THEN
            RETURN NULL;
        END IF;
        -- A partition's bound goes along (partition_bound.rs): the target empties exactly its
        -- rows, however it is partitioned itself. A DEFAULT partition without siblings has no
        -- constraint: it holds every row. (standard_conforming_strings is pinned above, so the
        -- bound's literals are written as the target reads them.)
        op1 := 'T';
        data1 := pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)
             || CASE WHEN TG_RELID = @table_literal@::pg_catalog.regclass THEN ''
                     ELSE E'\n' || COALESCE(pg_catalog.pg_get_partition_constraintdef(TG_RELID), 'true') END;
    ELSE
@partition_seen@
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                op1 := 'D';
                data1 := OLD::text;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                op2 := 'U';
                data2 := NEW::text;
            END IF;
            -- An update that left the row as it was changes nothing to state.
            IF TG_OP = 'UPDATE' AND data1 = data2 THEN
                RETURN NULL;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            -- Building the text failed where storing the row did not (see table_capture.sql):
            -- the application's write goes on, the target is told it cannot follow.
            op1 := 'E';
            data1 := E'\n' || pg_catalog.format('a row of %s is too large to send without a key (its text form is over 1 GB)', @table_display@);
            op2 := NULL;
        END;
    END IF;
    -- pg_sequence_last_value reads the sequence as a plain SELECT would (not subject to MVCC:
    -- a rotation is seen at once) at a fraction of the cost, once per row.
    CASE pg_catalog.pg_sequence_last_value('@schema@.generation_seq'::pg_catalog.regclass) % 3
@events[
    WHEN @gen@ THEN
        IF op1 IS NOT NULL THEN
            INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op, ev_data)
            VALUES (@gen@, pg_catalog.txid_current(), @no@, op1, data1);
        END IF;
        IF op2 IS NOT NULL THEN
            INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op, ev_data)
            VALUES (@gen@, pg_catalog.txid_current(), @no@, op2, data2);
        END IF;
]events@
    END CASE;
    RETURN NULL;
END
$f$;
