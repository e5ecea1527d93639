-- Capture for one table (@table@, quoted), installed inside the migration's schema.
-- Statement-level triggers with transition tables: a million-row UPDATE becomes one
-- INSERT ... SELECT, not a million trigger calls.
-- Events go straight into the current event table (@events@ is a CASE over the three), not
-- through the partitioned parent: tuple routing costs more than the insert itself for the
-- one-row statements most applications run.
-- @row@ is the new row as JSON; float columns also go as text, because JSON numbers have no
-- negative zero. @settings@ pins the output settings that shape that text (an application
-- session may lower extra_float_digits, which would round floats).
-- The functions declare no PL/pgSQL variables and take whole rows as `n.*`, so no user column
-- name can collide with them.
-- SECURITY DEFINER: the application's role needs no privilege on pgshift's schema, so capture
-- never makes an application transaction fail on permissions. Every relation is schema-qualified
-- and functions and operators resolve in pg_catalog first, so no search_path is needed.

CREATE FUNCTION @schema@.capture_@no@_insert() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER @settings@ AS $f$
BEGIN
    CASE (SELECT last_value % 3 FROM @schema@.generation_seq)
@events[
    WHEN @gen@ THEN
        INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op, ev_row)
        SELECT @gen@, txid_current(), @no@, 'U', @row@
          FROM pgshift_new n;
]events@
    END CASE;
    RETURN NULL;
END
$f$;

-- An UPDATE's exact effect, even when keys change: the old keys that are not among the new
-- keys are gone (listed first), and every new row is as it now is. One statement, one plan.
CREATE FUNCTION @schema@.capture_@no@_update() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER @settings@ AS $f$
BEGIN
    CASE (SELECT last_value % 3 FROM @schema@.generation_seq)
@events[
    WHEN @gen@ THEN
        INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op, ev_key, ev_row)
        SELECT @gen@, txid_current(), @no@, 'D', jsonb_build_object(@old_key_pairs@), NULL::jsonb
          FROM pgshift_old o
         WHERE NOT EXISTS (SELECT 1 FROM pgshift_new n WHERE (@new_key_cols@) = (@old_key_cols@))
        UNION ALL
        SELECT @gen@, txid_current(), @no@, 'U', NULL::jsonb, @row@
          FROM pgshift_new n;
]events@
    END CASE;
    RETURN NULL;
END
$f$;

CREATE FUNCTION @schema@.capture_@no@_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER @settings@ AS $f$
BEGIN
    CASE (SELECT last_value % 3 FROM @schema@.generation_seq)
@events[
    WHEN @gen@ THEN
        INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op, ev_key)
        SELECT @gen@, txid_current(), @no@, 'D', jsonb_build_object(@old_key_pairs@)
          FROM pgshift_old o;
]events@
    END CASE;
    RETURN NULL;
END
$f$;

CREATE FUNCTION @schema@.capture_@no@_truncate() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER @settings@ AS $f$
BEGIN
    CASE (SELECT last_value % 3 FROM @schema@.generation_seq)
@events[
    WHEN @gen@ THEN
        INSERT INTO @schema@.event_@gen@ (ev_gen, ev_txid, ev_table, ev_op) VALUES (@gen@, txid_current(), @no@, 'T');
]events@
    END CASE;
    RETURN NULL;
END
$f$;
