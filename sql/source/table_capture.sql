-- Capture for one table (@table@, quoted), installed inside the migration's schema.
--
-- Row-level AFTER triggers, named to fire before every other AFTER trigger of the row (see
-- table_triggers.sql): when an application's row trigger (or a foreign key's ON UPDATE CASCADE)
-- rewrites the row it fired for, its nested statement is captured after this one, so the last
-- event of a row is always the row as it is now. Statement-level triggers cannot promise that:
-- they fire after every nested statement, so their transition tables hold the older version.
-- Row triggers on a partitioned table are also cloned to every partition, present and future.
--
-- A row travels as PostgreSQL's own text form of the whole row (NEW::text): record output and
-- input round-trip every value of every type (json text, jsonb 'null', array bounds, -0 in
-- composites, up to the 1 GB field limit). Naming no column keeps capture working whatever
-- columns the application adds, drops or renames (pgshift notices and stops applying; the
-- application's writes never fail). Only the key columns are named, to see a key change.
-- Partitions must order their columns as their parent does (checked at install and while
-- running). The function pins the settings that shape the text, so the application session's
-- own DateStyle, TimeZone or extra_float_digits change nothing.
--
-- A row's capture can fire after a later change of the same row was already captured: when
-- another row's AFTER trigger (or a foreign key's cascade, or a function called by the
-- statement) changes it while this statement's AFTER events are still queued. NEW then holds an
-- older version, and replaying it last would leave the target stale (or resurrect a row the
-- nested statement deleted). Such a nested statement is captured, and ends, before the outer
-- statement's captures fire: its end is marked with the time of the client statement (see
-- statement_bound() in install.sql), and a capture that finds its own client statement's mark
-- states each key the change touched as it is now on the source, read by key ('U' with the row
-- holding it, or 'D' when none does), instead of OLD and NEW. Statements run one after another inside one
-- client statement (a function, a DO block) pay the re-read too; separate client statements
-- pay nothing but the mark.
--
-- 'U' carries the row as it now is (insert, update); 'D' the row as it was (delete); 'K' the
-- row as it was before an update changed its key (compared as binary images, so a respelling
-- counts as a change), which the target deletes only while it still holds exactly that row:
-- under a deferrable key, a statement shifting keys (id = id + 1) writes a key before the row
-- that had it leaves, and replaying row by row must not delete the newcomer. 'T' carries the
-- truncated relation's quoted name (and a partition's bound on the next line).
--
-- A row whose text form cannot be built (over 1 GB: record output doubles every quote and
-- backslash) must not fail the application's write: rendering runs in a block that catches the
-- failure, and then each key the change touched is stated as it is now on the source, as after
-- a nested change, the row going in parts (capture_row in install.sql) and an absent key as a
-- 'D' carrying only the key. The block is a subtransaction that writes nothing (no transaction
-- id, no subtransaction overflow), entered once per row: measured in
-- docs/benchmarks/capture-wide.md.
--
-- SECURITY DEFINER: the application's role needs no privilege on pgshift's schema, so capture
-- never fails an application transaction on permissions. search_path is pinned and every name
-- is qualified, so nothing in the application's path can run as pgshift's role.

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
    found_row text;
    key_changed boolean;
    nested boolean;
    ended text;
    whole boolean := true;
BEGIN
    -- pgshift's own sessions (apply, copy, repair) are never captured: they carry this schema's
    -- secret token (engine/pg/marker.rs). Only a session that set something is looked at.
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
        nested := false;
        IF pg_catalog.pg_trigger_depth() > 1 THEN
            -- Inside a trigger: a nested change itself. Marked here too, for a relation whose
            -- statement trigger the source watch has not added yet.
            PERFORM pg_catalog.set_config('pgshift.@tag@_ended',
                @statement_mark@, true);
            nested := true;
        ELSE
            -- Read first: until a captured statement ends in this transaction there is no mark,
            -- and nothing to compute.
            ended := pg_catalog.current_setting('pgshift.@tag@_ended', true);
            IF ended <> '' THEN
                nested := ended = @statement_mark@;
            END IF;
        END IF;
@partition_seen@
        key_changed := TG_OP = 'UPDATE' AND NOT pg_catalog.record_image_eq(@old_key@, @new_key@);
        -- Building the row's text can fail where storing the row did not: record output doubles
        -- quotes and backslashes, so 540 MB of quotes is over 1 GB of text. The application's
        -- write must not fail for it: the block below (a subtransaction that writes nothing, so
        -- it takes no transaction id) only renders text; when it fails, each key the change
        -- touched is stated as it is now on the source, in parts if need be (capture_row in
        -- install.sql).
        BEGIN
            IF NOT nested THEN
                IF key_changed THEN
                    op1 := 'K';
                    data1 := OLD::text;
                END IF;
                IF TG_OP = 'DELETE' THEN
                    op2 := 'D';
                    data2 := OLD::text;
                ELSE
                    op2 := 'U';
                    data2 := NEW::text;
                END IF;
            ELSE
                -- After a nested change neither OLD nor NEW is sure to be what the target holds or
                -- should hold: each key the change touched is stated as it is now on the source,
                -- the row holding it ('U') or its absence ('D', carried by the old or new row's
                -- text, whose key it is).
                IF TG_OP <> 'INSERT' THEN
                    SELECT (x.*)::text INTO found_row FROM @scan@ x WHERE @old_match@;
                    op1 := CASE WHEN found_row IS NULL THEN 'D' ELSE 'U' END;
                    data1 := COALESCE(found_row, OLD::text);
                END IF;
                IF TG_OP = 'INSERT' OR key_changed THEN
                    found_row := NULL;
                    SELECT (x.*)::text INTO found_row FROM @scan@ x WHERE @new_match@;
                    op2 := CASE WHEN found_row IS NULL THEN 'D' ELSE 'U' END;
                    data2 := COALESCE(found_row, NEW::text);
                END IF;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            op1 := NULL;
            op2 := NULL;
            whole := false;
        END;
        IF NOT whole THEN
            -- Declared here: only the rare path pays for setting up a row variable.
            DECLARE
                live @table@%ROWTYPE;
            BEGIN
                -- A 'D' carries only the key (the other fields empty), which is all the target
                -- reads of it.
                IF TG_OP <> 'INSERT' THEN
                    SELECT x.* INTO live FROM @scan@ x WHERE @old_match@;
                    IF FOUND THEN
                        PERFORM @schema@.capture_row(@no@, live,
                            pg_catalog.format('the row of %s with key %s', @table_display@, (@old_key@)::text),
                            (@old_key_row@)::text);
                    ELSE
                        PERFORM @schema@.add_event(@no@, 'D', (@old_key_row@)::text);
                    END IF;
                END IF;
                IF TG_OP = 'INSERT' OR key_changed THEN
                    SELECT x.* INTO live FROM @scan@ x WHERE @new_match@;
                    IF FOUND THEN
                        PERFORM @schema@.capture_row(@no@, live,
                            pg_catalog.format('the row of %s with key %s', @table_display@, (@new_key@)::text),
                            (@new_key_row@)::text);
                    ELSE
                        PERFORM @schema@.add_event(@no@, 'D', (@new_key_row@)::text);
                    END IF;
                END IF;
            END;
        END IF;
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
