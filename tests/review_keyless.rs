//! Review of tables without a key (whole-row identity): attempts to make the target differ from
//! the source, or the engine stop, lose or duplicate rows, against real servers. Tests marked
//! `#[ignore = "defect: ..."]` fail on the reviewed code; the others are things tried that held.

use std::time::Duration;

use pgshift_tests::case::Case;
use pgshift_tests::migrate::capture_schema;
use pgshift_tests::{quote_ident, wait_for};
use serde_json::json;

const ORDER: &str = "t::text COLLATE \"C\"";

/// Rows a source session writes under hostile output settings (TimeZone, DateStyle,
/// extra_float_digits, IntervalStyle, bytea_output) in types whose text is not canonical or
/// whose equal values have different text; duplicates made by updates, then one deleted;
/// all-NULL rows; composite, array-with-bounds, citext, money, float -0/NaN, jsonb, json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_types_settings_and_duplicates_hold() {
    let schema = "
        CREATE EXTENSION citext;
        CREATE TYPE pair AS (x numeric, y float8);
        CREATE TABLE odd (
            n numeric, f float8, r real, j jsonb, js json, ts timestamptz, tsn timestamp, d date,
            iv interval, a int[], c pair, ci citext, b bytea, m money, ch char(3), tr tstzrange,
            tt timetz, nn int NOT NULL DEFAULT 0, nf float8 NOT NULL DEFAULT 0,
            nts timestamptz NOT NULL DEFAULT '2020-01-01 00:00+00', nci text NOT NULL DEFAULT ''
        );";
    let seed = "
        INSERT INTO odd DEFAULT VALUES; INSERT INTO odd DEFAULT VALUES;
        INSERT INTO odd (n, f, r, j, js, ts, tsn, d, iv, a, c, ci, b, m, ch, tr, tt, nf, nts)
        VALUES (1.0, -0.0, 0.1, '{\"a\": 1, \"b\": [1, 2]}', '{\"a\":1,  \"a\":2}', '2024-03-10 02:30+00',
                '2024-03-10 02:30', '2024-01-02', '1 day', '[2:3]={1,2}', ROW(1.0, -0.0), 'AbC',
                '\\x00ff', 12.5, 'a', '[2024-01-01 00:00+00, 2024-01-02 00:00+05)', '10:00+02', -0.0,
                '2024-06-01 12:00+02'),
               (1.00, 0.0, 0.1, '{\"b\": [1, 2], \"a\": 1}', '{\"a\":1,\"a\":2}', '2024-03-10 03:30+01',
                '2024-03-10 02:30', '2024-01-02', '24 hours', '{1,2}', ROW(1.00, 0.0), 'abc',
                '\\x00ff', 12.5, 'a  ', '[2024-01-01 00:00+00, 2024-01-02 00:00+05)', '09:00+01', 0.0,
                '2024-06-01 10:00+00');
        INSERT INTO odd (f, nf) VALUES ('NaN', 'NaN'), (0.30000000000000004, 0.30000000000000004), (0.3, 0.3);
        INSERT INTO odd SELECT * FROM odd;";
    let case = Case::start(schema, seed).await;
    let tables = &[("odd", ORDER)];
    case.drain_and_compare(tables).await;
    // Hostile session settings on the writer; duplicates made equal by updates, then one of
    // them deleted; equal-by-= but differently spelled values updated one at a time.
    case.write_and_compare(
        "SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -15;
         SET IntervalStyle = 'sql_standard'; SET bytea_output = 'escape';
         UPDATE odd SET f = 0.3, nf = 0.3 WHERE ctid = (SELECT ctid FROM odd WHERE f = 0.30000000000000004 LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE nf = 0.3 LIMIT 1);
         UPDATE odd SET n = 1.000 WHERE ctid = (SELECT ctid FROM odd WHERE n = 1 LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE n = 1.0 AND f::text = '-0' LIMIT 1);
         UPDATE odd SET ci = 'ABC' WHERE ctid = (SELECT ctid FROM odd WHERE ci = 'abc' LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE ci::text = 'abc' LIMIT 1);
         UPDATE odd SET ts = ts + interval '0 s', nts = '2024-06-01 13:00+03' WHERE iv = '24 hours';
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE nts = '2024-06-01 10:00+00' LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE n IS NULL AND f IS NULL LIMIT 1);
         UPDATE odd SET a = '[5:6]={1,2}' WHERE ctid = (SELECT ctid FROM odd WHERE a = '{1,2}' LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE f::text = 'NaN' LIMIT 1);
         UPDATE odd SET nf = -0.0 WHERE nf = 0.0 AND ctid = (SELECT ctid FROM odd WHERE nf = 0 LIMIT 1);
         DELETE FROM odd WHERE ctid = (SELECT ctid FROM odd WHERE nf = 0 LIMIT 1);",
        tables,
    )
    .await;
}

/// A batch whose grouped apply trips a unique violation on a keyed table (two rows swapping a
/// unique value) is retried one event at a time; the keyless rows staged by the failed attempt
/// must go with it (counted once), in the same batch as duplicates and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_rows_staged_in_a_batch_retried_carefully_count_once() {
    let schema = "
        CREATE TABLE u (id int PRIMARY KEY, v int NOT NULL UNIQUE);
        CREATE TABLE kl (a int, b text);";
    let seed = "
        INSERT INTO u VALUES (1, 1), (2, 2);
        INSERT INTO kl SELECT g % 3, 'x' FROM generate_series(1, 30) g;
        INSERT INTO kl VALUES (NULL, NULL), (NULL, NULL), (NULL, NULL);";
    let case = Case::start(schema, seed).await;
    let tables = &[("u", "id"), ("kl", ORDER)];
    case.write_and_compare(
        "BEGIN;
         DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a IS NULL AND b IS NULL LIMIT 1);
         UPDATE kl SET b = NULL WHERE ctid = (SELECT ctid FROM kl WHERE a IS NULL AND b IS NULL LIMIT 1);
         INSERT INTO kl VALUES (7, 'new'), (7, 'new');
         DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 1 LIMIT 1);
         UPDATE kl SET b = 'y' WHERE ctid = (SELECT ctid FROM kl WHERE a = 2 LIMIT 1);
         UPDATE u SET v = 3 WHERE id = 1;
         UPDATE u SET v = 1 WHERE id = 2;
         UPDATE u SET v = 2 WHERE id = 1;
         INSERT INTO kl VALUES (8, 'after');
         COMMIT;",
        tables,
    )
    .await;
}

/// A partition that appears on the source (here created and written in one transaction, as a
/// loader does) is followed by the source watch: an `A` event ("empty this range on the
/// target"), then every row the partition holds, as inserts. On a target that cannot empty the
/// range (no partition of that name, and a bound it cannot evaluate: a hash bound, or a list
/// on an expression; the target here is one plain table, which the engine accepts), the `A`
/// is skipped with a warning ("its rows follow as upserts"). For a keyed table the rows that
/// follow are idempotent upserts; for a table without a key each one *adds* a row, so every
/// row the row trigger already carried (everything written to the partition before the watch
/// looked) is on the target twice.
///
/// Fixed: such a table now stops with `partition_unplaceable` (its rows would be added twice)
/// and a resync repairs it; the test checks that. Was seen: `ev differs: source has 3 rows, target 5; first difference at row 2: source:
/// Some("(b,2)") target: Some("(B,1)")` (the two rows written into the new partition are on
/// the target twice; the log says "a new partition's range cannot be emptied on the target
/// ... its rows follow as upserts").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_partition_appearing_with_rows_is_not_duplicated() {
    let case = Case::prepare(
        "CREATE TABLE ev (k text, v int) PARTITION BY LIST (lower(k));
         CREATE TABLE ev_a PARTITION OF ev FOR VALUES IN ('a');",
        "CREATE TABLE ev (k text, v int);",
        "INSERT INTO ev VALUES ('A', 1);",
    )
    .await;
    case.begin().await;
    case.drain().await;
    case.wait_partitions(&["public.ev_a"]).await;
    case.source
        .psql(
            "app",
            "BEGIN;
             CREATE TABLE ev_b PARTITION OF ev FOR VALUES IN ('b');
             INSERT INTO ev VALUES ('B', 1), ('b', 2);
             COMMIT;",
        )
        .await;
    // Fixed: the table stops, named, instead of taking the rows twice; a resync copies it.
    let m = wait_for("the table to stop", Duration::from_secs(60), || async {
        let m = case.server.migration("m").await;
        let error = m["error"].as_str().unwrap_or_default().to_string();
        error.contains("would be added twice").then_some(m)
    })
    .await;
    assert!(m["error"].as_str().unwrap().contains("ev_b"), "{m}");
    let on_target: i64 = sqlx::query_scalar("SELECT count(*) FROM ev")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert!(on_target <= 3, "rows added twice: {on_target}");
    let (status, body) = case
        .server
        .post("/migrations/m/tables/public.ev/resync", json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    case.drain_and_compare(&[("ev", ORDER)]).await;
}

/// A keyless partitioned table: rows moving between partitions (a delete and an insert on
/// the source), a partition truncated inside a transaction followed by inserts, savepoints
/// rolled back, duplicates through every path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_partitioned_moves_truncates_and_savepoints_hold() {
    let schema = "
        CREATE TABLE pl (at int, v text) PARTITION BY RANGE (at);
        CREATE TABLE pl_0 PARTITION OF pl FOR VALUES FROM (0) TO (100);
        CREATE TABLE pl_1 PARTITION OF pl FOR VALUES FROM (100) TO (200);
        CREATE TABLE pl_d PARTITION OF pl DEFAULT;";
    let seed = "INSERT INTO pl SELECT g % 300, 'v' || (g % 4) FROM generate_series(1, 3000) g;";
    let case = Case::start(schema, seed).await;
    let tables = &[("pl", ORDER)];
    case.write_and_compare(
        "BEGIN;
         UPDATE pl SET at = at + 100 WHERE ctid IN (SELECT ctid FROM pl_0 WHERE at = 5 LIMIT 3);
         SAVEPOINT s1;
         DELETE FROM pl WHERE at = 6;
         INSERT INTO pl VALUES (6, 'ghost'), (6, 'ghost');
         ROLLBACK TO SAVEPOINT s1;
         TRUNCATE pl_1;
         INSERT INTO pl VALUES (150, 'x'), (150, 'x'), (250, 'x');
         SAVEPOINT s2;
         UPDATE pl SET v = 'y' WHERE at = 150;
         RELEASE SAVEPOINT s2;
         UPDATE pl SET at = 50 WHERE ctid = (SELECT ctid FROM pl WHERE at = 250 LIMIT 1);
         COMMIT;
         BEGIN; TRUNCATE pl; INSERT INTO pl VALUES (1, 'a'), (1, 'a'), (101, 'b'); COMMIT;
         UPDATE pl SET v = 'a' WHERE at = 101;
         UPDATE pl SET at = 1 WHERE at = 101;
         DELETE FROM pl WHERE ctid = (SELECT ctid FROM pl WHERE at = 1 LIMIT 1);",
        tables,
    )
    .await;
}

/// Identity ALWAYS and generated columns in a keyless table; an AFTER row trigger on the source
/// that changes other rows of the same table in nested statements, and a cascade from a keyed
/// parent deleting keyless children; a keyed and a keyless table in the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_identity_generated_triggers_and_cascades_hold() {
    let schema = "
        CREATE TABLE parent (id int PRIMARY KEY, v text);
        CREATE TABLE child (id int GENERATED ALWAYS AS IDENTITY, pid int REFERENCES parent ON DELETE CASCADE ON UPDATE CASCADE,
                            x int, g int GENERATED ALWAYS AS (x * 10) STORED);
        CREATE FUNCTION spread() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_trigger_depth() < 3 THEN
                UPDATE child SET x = x + 1 WHERE pid = NEW.pid AND x < NEW.x;
                DELETE FROM child WHERE ctid = (SELECT ctid FROM child WHERE pid = NEW.pid AND x = NEW.x LIMIT 1)
                    AND NEW.x % 5 = 0;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER spread AFTER INSERT OR UPDATE ON child FOR EACH ROW EXECUTE FUNCTION spread();";
    let seed = "
        INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 20) g;
        INSERT INTO child (pid, x) SELECT g % 20 + 1, g % 7 FROM generate_series(1, 400) g;";
    let case = Case::prepare(schema, schema, seed).await;
    // The target's copy of the trigger must not fire on replicated rows.
    case.begin().await;
    case.drain().await;
    let tables = &[("parent", "id"), ("child", ORDER)];
    case.drain_and_compare(tables).await;
    case.write_and_compare(
        "UPDATE child SET x = x + 2 WHERE pid IN (3, 4);
         INSERT INTO child (pid, x) VALUES (5, 9), (5, 9), (5, 10);
         DELETE FROM parent WHERE id = 6;
         UPDATE parent SET id = 106 WHERE id = 7;
         BEGIN; UPDATE parent SET v = 'q' WHERE id = 8; DELETE FROM child WHERE pid = 8 AND x = 1;
                INSERT INTO child (pid, x) SELECT 8, 1 FROM generate_series(1, 3); COMMIT;",
        tables,
    )
    .await;
}

/// The DDL route on a keyless table: a column added, then the table given a primary key, then
/// a keyed table losing its key (it becomes keyless, duplicates follow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_schema_changes_through_pgshift_hold() {
    let schema = "
        CREATE TABLE kl (a int, b text);
        CREATE TABLE kd (id int PRIMARY KEY, v text);";
    let seed = "
        INSERT INTO kl SELECT g % 5, 'x' FROM generate_series(1, 50) g;
        INSERT INTO kd SELECT g, 'v' FROM generate_series(1, 50) g;";
    let case = Case::start(schema, seed).await;
    let ddl = |sql: &'static str| {
        let server = &case.server;
        async move {
            let (status, body) = server
                .post("/migrations/m/ddl", json!({ "sql": sql }))
                .await;
            assert!(status.is_success(), "{sql}: {status} {body}");
        }
    };
    let tables = &[("kl", ORDER), ("kd", ORDER)];
    ddl("ALTER TABLE kl ADD COLUMN c numeric DEFAULT 1.0").await;
    case.write_and_compare(
        "DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 1 LIMIT 1);
         INSERT INTO kl VALUES (1, 'x', 1.00), (1, 'x', 1.00);
         UPDATE kl SET c = 2 WHERE ctid = (SELECT ctid FROM kl WHERE a = 2 LIMIT 1);",
        tables,
    )
    .await;
    ddl("ALTER TABLE kd DROP CONSTRAINT kd_pkey").await;
    case.write_and_compare(
        "INSERT INTO kd VALUES (1, 'v'), (1, 'v');
         DELETE FROM kd WHERE ctid = (SELECT ctid FROM kd WHERE id = 1 LIMIT 1);
         UPDATE kd SET v = 'w' WHERE ctid = (SELECT ctid FROM kd WHERE id = 1 LIMIT 1);",
        tables,
    )
    .await;
    // A key from existing columns (no duplicates left).
    ddl("DELETE FROM kd WHERE id = 1; ALTER TABLE kd ADD PRIMARY KEY (id)").await;
    case.write_and_compare(
        "UPDATE kd SET v = 'after' WHERE id < 5; DELETE FROM kd WHERE id = 9; INSERT INTO kd VALUES (1, 'k');",
        tables,
    )
    .await;
}

/// The README's schema-change route re-renders capture for "a key added to a table that had
/// none". A table without a key rarely has columns that can become one; the usual way is a new
/// generated key: `ALTER TABLE kl ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY
/// KEY` (or `serial`). The statement runs on each side on its own, and each side numbers its
/// rows in its own physical order, which for a keyless table differs between the two sides
/// (the target's rows were written by the copy and the net apply, not in the source's order):
/// the same id names different rows on the two sides. Nothing notices: every later update and
/// delete by key reaches the wrong row on the target.
///
/// Fixed: the route refuses a column filled row by row (`schema_change_not_replayable`); the
/// test then takes the way the refusal names. Was seen: `kl differs: source has 46 rows, target 46; first difference at row 0: source:
/// Some("(3,x,1)") target: Some("(1,x,1)")` (ordered by id: id 1 names a different row on
/// each side; the updates and deletes by id that follow then change different rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_table_given_a_generated_key_through_the_ddl_route_stays_identical() {
    let schema = "CREATE TABLE kl (a int, b text);";
    let seed = "INSERT INTO kl SELECT g % 5, 'x' FROM generate_series(1, 50) g;";
    let case = Case::start(schema, seed).await;
    // Updates and deletes move rows around differently on the two sides.
    case.write_and_compare(
        "UPDATE kl SET b = 'y' WHERE ctid IN (SELECT ctid FROM kl WHERE a = 1 LIMIT 3);
         DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 2 LIMIT 1);
         INSERT INTO kl VALUES (2, 'x');
         UPDATE kl SET b = 'x' WHERE b = 'y';",
        &[("kl", ORDER)],
    )
    .await;
    // Fixed: refused, nothing changed; the way the refusal names works.
    let sql = "ALTER TABLE kl ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY";
    let (status, body) = case
        .server
        .post("/migrations/m/ddl", json!({ "sql": sql }))
        .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(
        body["error"]["code"], "schema_change_not_replayable",
        "{body}"
    );
    let (status, body) = case
        .server
        .post(
            "/migrations/m/ddl",
            json!({ "sql": "ALTER TABLE kl ADD COLUMN id bigint" }),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    case.write_and_compare(
        "UPDATE kl SET id = s.n FROM (SELECT ctid, row_number() OVER () AS n FROM kl) s WHERE kl.ctid = s.ctid;",
        &[("kl", ORDER)],
    )
    .await;
    let (status, body) = case
        .server
        .post(
            "/migrations/m/ddl",
            json!({ "sql": "ALTER TABLE kl ADD PRIMARY KEY (id)" }),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    case.write_and_compare(
        "UPDATE kl SET b = 'by key ' || id WHERE id % 7 = 0; DELETE FROM kl WHERE id % 11 = 0;",
        &[("kl", "id")],
    )
    .await;
}

/// The copy's snapshot is recorded, then the worker is held back (the keyed table it writes in
/// every batch is locked on the target) while writes go on; pgshift crashes and starts again
/// on the same data directory: the copy lands from the recorded snapshot and the held events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_crash_between_snapshot_and_landing_holds() {
    use pgshift_tests::server::{test_settings, TestServer};
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE kl (a int, b text);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 100) g;
        INSERT INTO kl SELECT g % 50, 'x' FROM generate_series(1, 5000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let mut hold = case.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE keyed IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    case.begin().await;
    let cap = capture_schema(&case.src).await;
    // The keyed table first in the transaction: the worker stops on it before it takes the
    // keyless table's state row.
    case.source
        .psql(
            "app",
            "UPDATE keyed SET v = 'w' WHERE id = 1; INSERT INTO kl VALUES (1, 'early');",
        )
        .await;
    wait_for(
        "the keyless copy's snapshot",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.table_state WHERE copy_position IS NOT NULL",
                quote_ident(&cap)
            ))
            .fetch_one(&case.dst)
            .await
            .unwrap_or(0);
            (n >= 1).then_some(())
        },
    )
    .await;
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 2 LIMIT 4);
             INSERT INTO kl SELECT 3, 'dup' FROM generate_series(1, 3);
             UPDATE kl SET b = 'y' WHERE ctid = (SELECT ctid FROM kl WHERE a = 1 AND b = 'early');
             TRUNCATE keyed; INSERT INTO keyed SELECT g, 'again' FROM generate_series(1, 10) g;",
        )
        .await;
    // Crash pgshift while the worker waits on the lock and the copy waits for the worker.
    let Case {
        source,
        target,
        src,
        dst,
        server,
    } = case;
    let dir = server.crash();
    hold.rollback().await.unwrap();
    source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 3 LIMIT 1);",
        )
        .await;
    let server = TestServer::start_in(&dir, test_settings()).await;
    let case = Case {
        source,
        target,
        src,
        dst,
        server,
    };
    case.drain_and_compare(&[("kl", ORDER), ("keyed", "id")])
        .await;
}

/// Holds the worker (a keyed table it writes in every batch is locked on the target) and waits
/// until a keyless copy has read and recorded its snapshot: writes made now land after it.
async fn hold_worker_after_keyless_snapshot(
    case: &Case,
    keyed: &str,
    keyless_write: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut hold = case.dst.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {keyed} IN SHARE MODE"))
        .execute(&mut *hold)
        .await
        .unwrap();
    case.begin().await;
    let cap = capture_schema(&case.src).await;
    case.source
        .psql(
            "app",
            &format!("UPDATE {keyed} SET v = 'w' WHERE id = 1; {keyless_write}"),
        )
        .await;
    wait_for(
        "the keyless copy's snapshot",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.table_state WHERE copy_position IS NOT NULL",
                quote_ident(&cap)
            ))
            .fetch_one(&case.dst)
            .await
            .unwrap_or(0);
            (n >= 1).then_some(())
        },
    )
    .await;
    hold
}

/// While a partitioned keyless table copies (its snapshot taken, the worker behind it): a
/// table with rows attached (mirrored empty on the target), a partition detached on the source
/// only, a partition truncated and refilled, rows moved between partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_partitions_change_during_the_copy_hold() {
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE pl (at int, v text) PARTITION BY RANGE (at);
        CREATE TABLE pl_0 PARTITION OF pl FOR VALUES FROM (0) TO (100);
        CREATE TABLE pl_1 PARTITION OF pl FOR VALUES FROM (100) TO (200);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 10) g;
        INSERT INTO pl SELECT g % 200, 'v' FROM generate_series(1, 4000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let hold =
        hold_worker_after_keyless_snapshot(&case, "keyed", "INSERT INTO pl VALUES (1, 'early')")
            .await;
    // A table loaded aside (not part of the migration), attached while pl copies.
    let staging = "CREATE TABLE staging (LIKE pl);";
    case.target.psql("app", staging).await;
    case.source
        .psql(
            "app",
            &format!("{staging} INSERT INTO staging SELECT 200 + g % 100, 's' FROM generate_series(1, 300) g;"),
        )
        .await;
    let attach = "ALTER TABLE pl ATTACH PARTITION staging FOR VALUES FROM (200) TO (300);";
    case.target.psql("app", attach).await;
    for sql in [
        attach,
        "INSERT INTO pl VALUES (250, 'into staging'), (250, 'into staging');",
        "BEGIN; TRUNCATE pl_0; INSERT INTO pl VALUES (5, 'x'), (5, 'x'); COMMIT;",
        "UPDATE pl SET at = at + 100 WHERE tableoid = 'pl_1'::regclass AND ctid IN (SELECT ctid FROM pl_1 WHERE at = 150 LIMIT 5);",
        "DELETE FROM pl WHERE tableoid = 'pl_1'::regclass AND ctid IN (SELECT ctid FROM pl_1 WHERE at = 160 LIMIT 3);",
    ] {
        case.source.psql("app", sql).await;
    }
    hold.commit().await.unwrap();
    case.wait_partitions(&["public.pl_0", "public.pl_1", "public.staging"])
        .await;
    case.drain_and_compare(&[("pl", ORDER), ("keyed", "id")])
        .await;
    case.source
        .psql(
            "app",
            "ALTER TABLE pl DETACH PARTITION pl_1; INSERT INTO pl VALUES (5, 'after');",
        )
        .await;
    case.wait_partitions(&["public.pl_0", "public.staging"])
        .await;
    case.drain_and_compare(&[("pl", ORDER)]).await;
}

/// The worker is held while a keyless table's snapshot is taken; then the table is truncated
/// (alone, and inside a transaction followed by inserts) and rows deleted one of several equal;
/// the target server is killed (-9) and started again before the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_truncate_during_copy_and_target_kill_hold() {
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE kl (a int, b text);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 10) g;
        INSERT INTO kl SELECT g % 10, 'x' FROM generate_series(1, 3000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let hold =
        hold_worker_after_keyless_snapshot(&case, "keyed", "DELETE FROM kl WHERE a = 9").await;
    case.source
        .psql(
            "app",
            "INSERT INTO kl VALUES (1, 'a'), (1, 'a');
             BEGIN; TRUNCATE kl; INSERT INTO kl VALUES (1, 'a'), (1, 'a'), (2, 'b'); COMMIT;
             DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 1 LIMIT 1);
             UPDATE kl SET b = 'a' WHERE a = 2; UPDATE kl SET a = 1 WHERE a = 2;",
        )
        .await;
    drop(hold);
    case.target.kill9().await;
    case.source
        .psql(
            "app",
            "INSERT INTO kl SELECT 4, 'late' FROM generate_series(1, 3);",
        )
        .await;
    case.target.start_again().await;
    case.drain_and_compare(&[("kl", ORDER), ("keyed", "id")])
        .await;
}

/// Resync of a keyless table while three sessions write it concurrently (duplicate inserts,
/// single-row deletes of one of several equal rows racing each other, updates that make rows
/// equal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_resync_under_concurrent_writers_holds() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let schema = "CREATE TABLE kl (a int, b text);";
    let seed = "INSERT INTO kl SELECT g % 20, 'x' FROM generate_series(1, 4000) g;";
    let case = Case::start(schema, seed).await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (pool, stop, committed) = (case.src.clone(), stop.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 7;
                let a = i % 20;
                let sql = match i % 4 {
                    0 => format!("INSERT INTO kl VALUES ({a}, 'x'), ({a}, 'x')"),
                    1 => format!(
                        "DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} LIMIT 1)"
                    ),
                    2 => format!("UPDATE kl SET b = 'x' WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} AND b <> 'x' LIMIT 1)"),
                    _ => format!("UPDATE kl SET b = 'y' WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} LIMIT 1)"),
                };
                if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let more = |n: u64| {
        let committed = committed.clone();
        async move {
            let before = committed.load(Ordering::Relaxed);
            wait_for("writes", Duration::from_secs(60), || async {
                (committed.load(Ordering::Relaxed) >= before + n).then_some(())
            })
            .await;
        }
    };
    more(200).await;
    let (status, body) = case
        .server
        .post("/migrations/m/tables/public.kl/resync", json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    more(300).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    case.drain_and_compare(&[("kl", ORDER)]).await;
}

/// Cutover with checksums and the way back armed, writes on the new side (duplicates, deletes
/// of one of several equal rows), cut back with checksums: both servers hold the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_cutover_reverse_and_back_hold() {
    use pgshift_tests::cutover::{cutover, relaxed, wait_synced};
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE kl (a int, b text, n numeric);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 10) g;
        INSERT INTO kl SELECT g % 10, 'x', 1.0 FROM generate_series(1, 1000) g;";
    let case = Case::start(schema, seed).await;
    case.source
        .psql(
            "app",
            "UPDATE kl SET n = 1.00 WHERE ctid = (SELECT ctid FROM kl LIMIT 1);",
        )
        .await;
    let op = cutover(
        &case.server,
        "m",
        relaxed(json!({"reverse": true, "checksums": true})),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    wait_synced(&case.server, "m-reverse").await;
    case.target
        .psql(
            "app",
            "INSERT INTO kl VALUES (3, 'new side', 2), (3, 'new side', 2);
             DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE n = 1.00 AND n::text = '1.00');
             DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 4 LIMIT 1);
             UPDATE kl SET b = 'y' WHERE ctid = (SELECT ctid FROM kl WHERE a = 5 LIMIT 1);",
        )
        .await;
    let op = cutover(
        &case.server,
        "m-reverse",
        relaxed(json!({"checksums": true})),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    for (t, order) in [("kl", ORDER), ("keyed", "id")] {
        pgshift_tests::migrate::assert_same_rows(&case.src, &case.dst, t, order).await;
    }
}

/// Rows of tens of megabytes, duplicated, so that a batch's staged rows span two statements
/// (64 MB each); one of the equal rows deleted, another updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_wide_duplicate_rows_hold() {
    let case = Case::start("CREATE TABLE w (a int, big text);", "").await;
    let rows = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT x FROM (SELECT a || ' ' || md5(big) AS x FROM w) s ORDER BY x COLLATE \"C\"",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    case.source
        .psql(
            "app",
            "INSERT INTO w SELECT 1, repeat('x', 23000000) FROM generate_series(1, 3);",
        )
        .await;
    case.drain().await;
    assert_eq!(rows(&case.src).await, rows(&case.dst).await);
    case.source
        .psql(
            "app",
            "DELETE FROM w WHERE ctid = (SELECT ctid FROM w LIMIT 1);
             UPDATE w SET a = 2 WHERE ctid = (SELECT ctid FROM w WHERE a = 1 LIMIT 1);",
        )
        .await;
    case.drain().await;
    assert_eq!(rows(&case.src).await, rows(&case.dst).await);
    assert_eq!(Case::count(&case.dst, "SELECT count(*) FROM w").await, 2);
}

/// Rows a table held before it was ATTACHed were never captured: the source watch sends them
/// (an `A` event, then every row as an insert) when it next looks, about a second later, or
/// later still when the table is busy ("tried again next time"). Until then the partition's
/// rows are written like any other: the cloned row trigger captures an update or a delete of
/// one of them as the removal of a row the target never received. A keyed table shrugs (a
/// delete of an absent key does nothing, the watch's upserts bring the rest); a keyless table
/// counts the removal as missing and stops with `target_differs`, for good: every retry
/// replays the same batch, and the watch's events come after it in the stream. The window is
/// every write between the ATTACH and the watch's next look, here one transaction (an
/// application that attaches a staging table and then fixes a row in it). The same happens
/// during the keyless copy (the held events replay the removal before the watch's events).
///
/// Seen: `the migration keeps failing instead of draining: 2 row(s) of public.pl removed on
/// the source are not on the target (one of them: (250,s)); the target differs from the
/// source: resync the table`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "limitation (README): an update or delete of a row of a just-attached partition, before the source watch follows it, stops a keyless table loudly with target_differs; a resync repairs it"]
async fn keyless_rows_of_an_attached_partition_changed_before_the_watch_follows_it() {
    let schema = "
        CREATE TABLE pl (at int, v text) PARTITION BY RANGE (at);
        CREATE TABLE pl_0 PARTITION OF pl FOR VALUES FROM (0) TO (100);";
    let case = Case::start(
        schema,
        "INSERT INTO pl SELECT g % 100, 'v' FROM generate_series(1, 100) g;",
    )
    .await;
    case.wait_partitions(&["public.pl_0"]).await;
    let staging = "CREATE TABLE staging (LIKE pl);";
    case.target.psql("app", staging).await;
    case.source
        .psql(
            "app",
            &format!("{staging} INSERT INTO staging SELECT 200 + g % 100, 's' FROM generate_series(1, 300) g;"),
        )
        .await;
    let attach = "ALTER TABLE pl ATTACH PARTITION staging FOR VALUES FROM (200) TO (300);";
    case.target.psql("app", attach).await;
    case.source
        .psql(
            "app",
            &format!(
                "BEGIN;
                 {attach}
                 DELETE FROM pl WHERE tableoid = 'staging'::regclass AND ctid = (SELECT ctid FROM staging WHERE at = 250 LIMIT 1);
                 UPDATE pl SET v = 'fixed' WHERE tableoid = 'staging'::regclass AND ctid = (SELECT ctid FROM staging WHERE at = 251 LIMIT 1);
                 COMMIT;"
            ),
        )
        .await;
    case.wait_partitions(&["public.pl_0", "public.staging"])
        .await;
    case.drain_and_compare(&[("pl", ORDER)]).await;
}

/// Writers keep writing while the DDL route gives a keyless table a primary key from an
/// existing column, and takes a keyed table's key away (it becomes keyless): the events before
/// and after each change are read with their own identity. Column names that need quoting or
/// that the apply statements use as aliases (t, s, r, net, canon, n).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_identity_switches_under_concurrent_writes_hold() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let schema = r#"
        CREATE TABLE kl (id int NOT NULL, "t" text, "s" int, "r" int, "net" int, "canon" text, "n" int, "Odd ""Col""" text);
        CREATE TABLE kd (id int PRIMARY KEY, "t" text, "s" int);"#;
    let seed = r#"
        INSERT INTO kl SELECT g, 'x', 1, 2, 3, 'c', 4, 'o' FROM generate_series(1, 200) g;
        INSERT INTO kd SELECT g, 'x', 1 FROM generate_series(1, 200) g;"#;
    let case = Case::start(schema, seed).await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, stop, committed) = (case.src.clone(), stop.clone(), committed.clone());
        tokio::spawn(async move {
            let mut i = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = i % 200 + 1;
                let sql = format!(
                    "UPDATE kl SET \"t\" = \"t\" || 'u', \"net\" = \"net\" + 1 WHERE id = {k};
                     UPDATE kd SET \"t\" = \"t\" || 'u' WHERE id = {k};
                     INSERT INTO kl VALUES ({i}, 'n', 0, 0, 0, 'c', 0, 'o');
                     INSERT INTO kd VALUES ({i}, 'n', 0);
                     DELETE FROM kl WHERE id = {};
                     DELETE FROM kd WHERE id = {};",
                    i - 5,
                    i - 5
                );
                if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let more = |n: u64| {
        let committed = committed.clone();
        async move {
            let before = committed.load(Ordering::Relaxed);
            wait_for("writes", Duration::from_secs(60), || async {
                (committed.load(Ordering::Relaxed) >= before + n).then_some(())
            })
            .await;
        }
    };
    more(50).await;
    for sql in [
        "ALTER TABLE kl ADD PRIMARY KEY (id)",
        "ALTER TABLE kd DROP CONSTRAINT kd_pkey",
    ] {
        let (status, body) = case
            .server
            .post("/migrations/m/ddl", json!({ "sql": sql }))
            .await;
        assert!(status.is_success(), "{sql}: {status} {body}");
        more(50).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    case.drain_and_compare(&[("kl", "id"), ("kd", ORDER)]).await;
}

/// Splits a case to crash its pgshift and start another on the same data directory.
async fn crash_and_restart(case: Case, between: impl std::future::Future<Output = ()>) -> Case {
    use pgshift_tests::server::{test_settings, TestServer};
    let Case {
        source,
        target,
        src,
        dst,
        server,
    } = case;
    let dir = server.crash();
    between.await;
    let server = TestServer::start_in(&dir, test_settings()).await;
    Case {
        source,
        target,
        src,
        dst,
        server,
    }
}

/// pgshift dies while the whole-table copy streams into the target (its source snapshot open,
/// nothing recorded): the target transaction goes with it, the next run reads the table again
/// with a new snapshot and replays what the worker held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_crash_while_the_copy_reads_holds() {
    let schema = "CREATE TABLE kl (a int, b text);";
    let seed = "INSERT INTO kl SELECT g % 50, 'x' FROM generate_series(1, 20000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let hold = lock_share(&case, "kl").await;
    case.begin().await;
    case.wait_waiters(&["kl"], 1).await;
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 1 LIMIT 5);
             INSERT INTO kl SELECT 2, 'x' FROM generate_series(1, 5);
             UPDATE kl SET b = 'y' WHERE ctid IN (SELECT ctid FROM kl WHERE a = 3 LIMIT 2);",
        )
        .await;
    let src = case.src.clone();
    let case = crash_and_restart(case, async move {
        hold.commit().await.unwrap();
        sqlx::raw_sql("DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 2 LIMIT 7); INSERT INTO kl VALUES (1, 'x');")
            .execute(&src)
            .await
            .unwrap();
    })
    .await;
    case.drain_and_compare(&[("kl", ORDER)]).await;
}

/// pgshift dies while the copy lands (its last transaction replaying the held events waits for
/// a lock on the table): the next run lands again from the recorded snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_crash_while_the_copy_lands_holds() {
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE kl (a int, b text);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 10) g;
        INSERT INTO kl SELECT g % 50, 'x' FROM generate_series(1, 5000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let hold_worker =
        hold_worker_after_keyless_snapshot(&case, "keyed", "INSERT INTO kl VALUES (1, 'x')").await;
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 1 LIMIT 5);
             INSERT INTO kl SELECT 2, 'x' FROM generate_series(1, 5);
             BEGIN; TRUNCATE keyed; INSERT INTO keyed VALUES (1, 'k'); COMMIT;",
        )
        .await;
    let hold_table = lock_share(&case, "kl").await;
    hold_worker.commit().await.unwrap();
    // The landing transaction waits for the table.
    case.wait_waiters(&["kl"], 1).await;
    let src = case.src.clone();
    let case = crash_and_restart(case, async move {
        sqlx::raw_sql("DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 2 LIMIT 7); INSERT INTO kl VALUES (1, 'x');")
            .execute(&src)
            .await
            .unwrap();
        hold_table.commit().await.unwrap();
    })
    .await;
    case.drain_and_compare(&[("kl", ORDER), ("keyed", "id")])
        .await;
}

/// Holds a SHARE lock on `table` on the target: writes to it wait (the keyless copy's COPY, the
/// landing's replay), reads do not.
async fn lock_share(case: &Case, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = case.dst.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN SHARE MODE"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Same root as the generated key above: a column added through the DDL route with a volatile
/// default (`now()`, `clock_timestamp()`, `gen_random_uuid()`, a sequence) is filled by each
/// side on its own, so every existing row differs between the two sides. A keyed table
/// diverges silently; a keyless table's next delete or update of such a row names a whole row
/// the target does not hold, and the migration stops on it.
///
/// Fixed: refused (`schema_change_not_replayable`), nothing changed. Was seen: `the migration
/// keeps failing instead of draining: 1 row(s) of public.kl removed on
/// the source are not on the target (one of them: (1,x,"2026-… +00")); the target differs
/// from the source: resync the table`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_column_added_with_a_volatile_default_through_the_ddl_route() {
    let case = Case::start(
        "CREATE TABLE kl (a int, b text);",
        "INSERT INTO kl SELECT g, 'x' FROM generate_series(1, 10) g;",
    )
    .await;
    // Fixed: refused, and the source is unchanged.
    let sql = "ALTER TABLE kl ADD COLUMN at timestamptz NOT NULL DEFAULT now()";
    let (status, body) = case
        .server
        .post("/migrations/m/ddl", json!({ "sql": sql }))
        .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(
        body["error"]["code"], "schema_change_not_replayable",
        "{body}"
    );
    let added: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'kl'::regclass AND attname = 'at')",
    )
    .fetch_one(&case.src)
    .await
    .unwrap();
    assert!(!added, "the refused column stayed on the source");
    case.write_and_compare("DELETE FROM kl WHERE a = 1;", &[("kl", "a")])
        .await;
}

/// Three sessions write a keyless table through its copy (both sides of its snapshot): duplicate inserts, racing single-row deletes of one of several
/// equal rows, updates that make rows equal, an occasional truncate followed by inserts, and in
/// the same transactions a keyed table whose rows swap a unique value. (The batch retried one
/// event at a time with keyless rows staged is `keyless_rows_staged_in_a_batch_retried_...`:
/// here the swaps did not trip the grouped apply.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_copy_under_racing_writers_holds() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let schema = "
        CREATE TABLE keyed (id int PRIMARY KEY, v text);
        CREATE TABLE u (id int PRIMARY KEY, w int NOT NULL UNIQUE);
        CREATE TABLE kl (a int, b text);";
    let seed = "
        INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 10) g;
        INSERT INTO u VALUES (1, 1), (2, 2);
        INSERT INTO kl SELECT g % 20, 'x' FROM generate_series(1, 20000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (pool, stop, committed) = (case.src.clone(), stop.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 3;
                let a = i % 20;
                let sql = match i % 9 {
                    0 | 1 => format!("INSERT INTO kl VALUES ({a}, 'x'), ({a}, 'x')"),
                    2 | 3 => format!(
                        "DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} LIMIT 1)"
                    ),
                    4 => format!("UPDATE kl SET b = 'x' WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} AND b <> 'x' LIMIT 1)"),
                    5 => format!("UPDATE kl SET b = 'y' WHERE ctid = (SELECT ctid FROM kl WHERE a = {a} LIMIT 1)"),
                    6 => "UPDATE u SET w = -1 WHERE id = 1; UPDATE u SET w = 3 - w WHERE id = 2;
                          UPDATE u SET w = 3 - (SELECT w FROM u WHERE id = 2) WHERE id = 1;
                          INSERT INTO kl VALUES (99, 'swap');".to_string(),
                    7 if i % 200 == 7 => "TRUNCATE kl; INSERT INTO kl SELECT g % 20, 'x' FROM generate_series(1, 500) g;".to_string(),
                    _ => format!("UPDATE keyed SET v = md5(v) WHERE id = {}", a % 10 + 1),
                };
                if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let more = |n: u64| {
        let committed = committed.clone();
        async move {
            let before = committed.load(Ordering::Relaxed);
            wait_for("writes", Duration::from_secs(60), || async {
                (committed.load(Ordering::Relaxed) >= before + n).then_some(())
            })
            .await;
        }
    };
    more(50).await;
    // The copy takes its snapshot while the writers go on; the worker holds their events
    // until the copy lands. (Multi-statement writes without BEGIN: one implicit transaction,
    // which a failure rolls back without leaving the pooled connection aborted.)
    case.begin().await;
    more(400).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    case.drain_and_compare(&[("kl", ORDER), ("u", "id"), ("keyed", "id")])
        .await;
}

/// The source's keyless table has a dropped column and the target orders its columns otherwise:
/// the copy, the removals by whole row and the additions go by column name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_dropped_column_and_other_column_order_hold() {
    let case = Case::prepare(
        "CREATE TABLE kl (a int, gone text, b text, c numeric); ALTER TABLE kl DROP COLUMN gone;",
        "CREATE TABLE kl (c numeric, b text, a int);",
        "INSERT INTO kl SELECT g % 5, 'x', 1.0 FROM generate_series(1, 100) g;",
    )
    .await;
    case.begin().await;
    case.drain().await;
    let order = "a, b, c::text COLLATE \"C\"";
    let same = || async {
        let q = format!("SELECT (a, b, c)::text FROM kl ORDER BY {order}");
        let a: Vec<String> = sqlx::query_scalar(&q).fetch_all(&case.src).await.unwrap();
        let b: Vec<String> = sqlx::query_scalar(&q).fetch_all(&case.dst).await.unwrap();
        assert_eq!(a, b);
    };
    same().await;
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 1 LIMIT 1);
             UPDATE kl SET c = 1.00 WHERE ctid = (SELECT ctid FROM kl WHERE a = 2 LIMIT 1);
             DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE a = 2 AND c::text = '1.0' LIMIT 1);
             INSERT INTO kl VALUES (7, 'y', 2), (7, 'y', 2);",
        )
        .await;
    case.drain().await;
    same().await;
}

/// The source server is killed (-9) while the whole-table copy's transaction is open on it (the
/// target side of the copy waits for a lock), and started again: the copy starts over with a
/// new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_source_killed_during_the_copy_holds() {
    let schema = "CREATE TABLE kl (a int, b text);";
    let seed = "INSERT INTO kl SELECT g % 50, 'x' FROM generate_series(1, 20000) g;";
    let case = Case::prepare(schema, schema, seed).await;
    let hold = lock_share(&case, "kl").await;
    case.begin().await;
    case.wait_waiters(&["kl"], 1).await;
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 1 LIMIT 5);
             INSERT INTO kl SELECT 2, 'x' FROM generate_series(1, 5);",
        )
        .await;
    case.source.kill9().await;
    case.source.start_again().await;
    hold.commit().await.unwrap();
    case.source
        .psql(
            "app",
            "DELETE FROM kl WHERE ctid IN (SELECT ctid FROM kl WHERE a = 2 LIMIT 7); INSERT INTO kl VALUES (1, 'x');",
        )
        .await;
    case.drain_and_compare(&[("kl", ORDER)]).await;
}
