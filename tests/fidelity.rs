//! Nothing lost, nothing altered: one test per way the target used to differ silently from the
//! source (issue 9). Each builds a small schema on two real servers, starts a migration, writes
//! the hard case on the source, and compares every row once the target has drained.

use std::time::Duration;

use pgshift_tests::case::Case;
use pgshift_tests::migrate::capture_schema;

/// Item 2: an application's AFTER row trigger that rewrites the row it fired for, and a
/// self-referencing foreign key with ON UPDATE CASCADE: the target holds the final version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_rewritten_by_application_triggers_arrive_as_they_end() {
    let case = Case::start(
        "CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node (id) ON UPDATE CASCADE,
                            name text NOT NULL, path text);
         CREATE FUNCTION node_path() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF pg_trigger_depth() = 1 THEN
                 UPDATE node SET path = coalesce((SELECT p.path FROM node p WHERE p.id = NEW.parent) || '/', '') || NEW.name
                  WHERE id = NEW.id;
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER a_path AFTER INSERT OR UPDATE OF name, parent ON node
             FOR EACH ROW EXECUTE FUNCTION node_path();",
        "",
    )
    .await;
    // Each step is compared on its own: a later statement must not mask an earlier stale row.
    for step in [
        "INSERT INTO node (id, parent, name) VALUES (1, NULL, 'root');
         INSERT INTO node (id, parent, name) VALUES (2, 1, 'a'), (3, 2, 'b');",
        "UPDATE node SET name = 'c' WHERE id = 3;",
        // The outer statement's new rows still hold the old parents; the cascade moved them.
        "UPDATE node SET id = id + 100;",
    ] {
        case.write_and_compare(step, &[("node", "id")]).await;
    }
    let path: Option<String> = sqlx::query_scalar("SELECT path FROM node WHERE id = 103")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert_eq!(path.as_deref(), Some("root/a/c"));
}

/// Item 3 and 4: TRUNCATE of one partition empties that partition alone on the target, and a
/// partition created after the migration started is captured (rows and truncates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_truncated_alone_and_created_later_are_replicated() {
    let schema = "CREATE TABLE reading (id int, at date, v numeric, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
                  CREATE TABLE reading_2025 PARTITION OF reading FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
                  CREATE TABLE reading_2026 PARTITION OF reading FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');";
    let case = Case::start(
        schema,
        "INSERT INTO reading SELECT g, date '2025-06-01' + (g % 400), g FROM generate_series(1, 500) g;",
    )
    .await;
    case.write_and_compare(
        "TRUNCATE reading_2025; INSERT INTO reading VALUES (1000, '2025-03-03', 1);",
        &[("reading", "id, at")],
    )
    .await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM reading_2026")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert!(left > 0, "the other partition keeps its rows on the target");

    // A partition created while the migration runs (as pg_partman does every day).
    let new_partition =
        "CREATE TABLE reading_2027 PARTITION OF reading FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');";
    case.target.psql("app", new_partition).await;
    case.source.psql("app", new_partition).await;
    case.write_and_compare(
        "INSERT INTO reading SELECT g, date '2027-02-01' + (g % 300), g FROM generate_series(2000, 2100) g;
         UPDATE reading SET v = v * 2 WHERE at >= '2027-01-01';",
        &[("reading", "id, at")],
    )
    .await;
    // Its own TRUNCATE trigger arrives within a maintenance round; wait for it, then truncate.
    let schema = capture_schema(&case.src).await;
    pgshift_tests::wait_for(
        "the truncate capture on the new partition",
        Duration::from_secs(30),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'reading_2027'::regclass AND tgname LIKE $1",
            )
            .bind(format!("!{schema}%truncate"))
            .fetch_one(&case.src)
            .await
            .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    case.write_and_compare(
        "TRUNCATE reading_2027; INSERT INTO reading VALUES (3000, '2027-05-05', 3);",
        &[("reading", "id, at")],
    )
    .await;
}

/// Item 5: an inheritance parent is copied and changed without its children's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheritance_parents_replicate_their_own_rows_only() {
    let case = Case::start(
        "CREATE TABLE animal (id int PRIMARY KEY, name text);
         CREATE TABLE dog (good boolean, PRIMARY KEY (id)) INHERITS (animal);",
        "INSERT INTO animal VALUES (1, 'cat'), (2, 'cow');
         INSERT INTO dog VALUES (3, 'rex', true);",
    )
    .await;
    // Only the parent is migrated: the child is the operator's to move (or not).
    // (Case::start migrates every table; the child's own rows are compared too.)
    case.write_and_compare(
        "UPDATE animal SET name = upper(name);
         DELETE FROM animal WHERE id = 2;
         INSERT INTO dog VALUES (4, 'fido', false);",
        &[("ONLY animal", "id"), ("dog", "id")],
    )
    .await;
}

/// Item 7: values that JSON does not round-trip arrive exactly as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_exactly() {
    let case = Case::start(
        "CREATE TYPE pair AS (x float8, y float8);
         CREATE DOMAIN signed_zero AS float8;
         CREATE TABLE v (id int PRIMARY KEY, j json, jb jsonb, a int[], p pair, ps pair[], d signed_zero,
                         m money, t timestamptz, i interval, f real);",
        "",
    )
    .await;
    case.write_and_compare(
        r#"SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard';
           SET extra_float_digits = -15;
           INSERT INTO v VALUES
             (1, '{"a": 1,   "a": 2}', 'null', '[0:2]={1,2,3}', ROW('-0', 1.5), ARRAY[ROW('-0', '-0')::pair], '-0',
              12.34, '2026-01-02 03:04:05.678+05:45', '1 year 2 mons -3 days 04:05:06', 0.1),
             (2, NULL, NULL, '[-3:-2]={7,8}', NULL, '{}', 'NaN', -0.5, 'infinity', '-1 day', '-0'),
             (3, ' [ ] ', '"x"', '{}', ROW(NULL, 'Infinity'), ARRAY[NULL::pair], '-Infinity', 0, '1999-12-31 23:59:59.999999+00',
              '0', 'NaN');
           UPDATE v SET j = '{ "b" : [1,  2] }', jb = 'null' WHERE id = 3;"#,
        &[("v", "id")],
    )
    .await;
    // jsonb 'null' is a value, not SQL NULL.
    let nulls: i64 = sqlx::query_scalar("SELECT count(*) FROM v WHERE jb IS NULL")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert_eq!(nulls, 1);
}

/// Item 8: a key changed to an equal but differently written value takes the new spelling;
/// `SET id = DEFAULT` on an identity ALWAYS column moves the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respelled_keys_and_identity_defaults_arrive() {
    let case = Case::start(
        "CREATE EXTENSION citext;
         CREATE TABLE price (k numeric PRIMARY KEY, v int);
         CREATE TABLE login (name citext PRIMARY KEY, v int);
         CREATE TABLE ticket (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         CREATE TABLE counter (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY (START WITH 100));",
        "INSERT INTO price VALUES (1.0, 1), (2, 2);
         INSERT INTO login VALUES ('Alice', 1), ('bob', 2);
         INSERT INTO ticket (v) VALUES ('a'), ('b');
         INSERT INTO counter (k) VALUES (1), (2);",
    )
    .await;
    case.write_and_compare(
        "UPDATE price SET k = 1.00 WHERE k = 1;
         UPDATE price SET k = 2.000, v = 3 WHERE k = 2;
         UPDATE login SET name = 'ALICE' WHERE name = 'alice';
         UPDATE ticket SET id = DEFAULT WHERE v = 'a';
         UPDATE counter SET n = DEFAULT WHERE k = 2;",
        &[
            ("price", "k"),
            ("login", "name"),
            ("ticket", "id"),
            ("counter", "k"),
        ],
    )
    .await;
    let spelled: Vec<String> = sqlx::query_scalar("SELECT k::text FROM price ORDER BY k")
        .fetch_all(&case.dst)
        .await
        .unwrap();
    assert_eq!(spelled, vec!["1.00", "2.000"]);
}

/// Item 10: deletes on a table with a NOT NULL domain column outside the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_with_not_null_domains_apply() {
    let case = Case::start(
        "CREATE DOMAIN label AS text NOT NULL CHECK (VALUE <> '');
         CREATE TABLE item (id int PRIMARY KEY, l label, n int);",
        "INSERT INTO item SELECT g, 'l' || g, g FROM generate_series(1, 100) g;",
    )
    .await;
    case.write_and_compare(
        "DELETE FROM item WHERE id % 3 = 0; UPDATE item SET id = id + 1000 WHERE id % 3 = 1;",
        &[("item", "id")],
    )
    .await;
}

/// Item 11: wide rows are applied in statements bounded by bytes, not by a row count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_apply_in_byte_bounded_statements() {
    let case = Case::start(
        "CREATE TABLE blob (id int PRIMARY KEY, b bytea, t text);",
        "",
    )
    .await;
    // 24 rows of ~4 MB of row text each (hex doubles bytea): more than one statement's worth.
    case.write_and_compare(
        "INSERT INTO blob SELECT g, decode(repeat(md5(g::text), 65536), 'hex'), repeat('x', 2000000)
           FROM generate_series(1, 24) g;
         UPDATE blob SET t = t || 'y' WHERE id % 2 = 0;
         DELETE FROM blob WHERE id % 5 = 0;",
        &[("blob", "id")],
    )
    .await;
}

/// Item 14: an application session with a hostile search_path can neither run its own code as
/// pgshift's role nor make capture fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_search_path_changes_nothing() {
    let case = Case::start("CREATE TABLE t (id int PRIMARY KEY, v jsonb);", "").await;
    case.source
        .psql(
            "app",
            "CREATE SCHEMA mine;
             CREATE FUNCTION mine.txid_current() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked txid_current'; END $$;
             CREATE FUNCTION mine.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked to_jsonb'; END $$;
             CREATE FUNCTION mine.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked format'; END $$;
             CREATE FUNCTION mine.record_image_eq(record, record) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked record_image_eq'; END $$;",
        )
        .await;
    case.write_and_compare(
        "SET search_path = mine, pg_catalog, public;
         INSERT INTO t VALUES (1, '{\"a\": 1}'), (2, '[]');
         UPDATE t SET id = 3 WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         TRUNCATE t;
         INSERT INTO t VALUES (4, 'null');",
        &[("t", "id")],
    )
    .await;
}

/// Item 15: sessions with session_replication_role = replica (restore jobs, other replication)
/// are captured too when pgshift's role owns the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_role_sessions_are_captured() {
    let case = Case::start(
        "CREATE TABLE r (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE r1 PARTITION OF r FOR VALUES FROM (0) TO (100);
         CREATE TABLE s (id int PRIMARY KEY, v text);",
        "INSERT INTO r VALUES (1, 'a'), (2, 'b'); INSERT INTO s VALUES (1, 'a');",
    )
    .await;
    case.write_and_compare(
        "SET session_replication_role = replica;
         INSERT INTO r VALUES (3, 'c'); UPDATE r SET v = 'B' WHERE id = 2; DELETE FROM r WHERE id = 1;
         INSERT INTO s VALUES (2, 'b'); TRUNCATE r1;",
        &[("r", "id"), ("s", "id")],
    )
    .await;
}

/// A column added on both sides (as Londiste's users do it) is never silently left behind: the
/// migration stops with the table and column named. Dropping a column never makes the
/// application's writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_changes_are_named_and_never_fail_the_application() {
    let case = Case::start(
        "CREATE TABLE t (id int PRIMARY KEY, v int, gone text);",
        "INSERT INTO t SELECT g, g, 'x' FROM generate_series(1, 10) g;",
    )
    .await;
    let add = "ALTER TABLE t ADD COLUMN w int;";
    case.target.psql("app", add).await;
    case.source.psql("app", add).await;
    case.source
        .psql("app", "UPDATE t SET w = id * 10; ALTER TABLE t DROP COLUMN gone; INSERT INTO t VALUES (11, 11, 110);")
        .await;
    let m = pgshift_tests::wait_for(
        "the migration to name the new column",
        Duration::from_secs(60),
        || async {
            let m = case.server.migration("m").await;
            let error = m["error"].as_str().unwrap_or_default().to_string();
            error
                .contains("public.t gained column w on the source")
                .then_some(m)
        },
    )
    .await;
    assert_ne!(m["state"], "synced", "{m}");
}

/// Keys swapped and shifted inside a transaction (through a free key, as immediate keys need)
/// arrive as on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_and_shifted_keys_arrive() {
    let case = Case::start(
        "CREATE TABLE slot (id int PRIMARY KEY, who text);",
        "INSERT INTO slot SELECT g, 's' || g FROM generate_series(1, 50) g;",
    )
    .await;
    case.write_and_compare(
        "BEGIN;
         UPDATE slot SET id = -1 WHERE id = 1; UPDATE slot SET id = 1 WHERE id = 2; UPDATE slot SET id = 2 WHERE id = -1;
         UPDATE slot SET id = id + 100 WHERE id > 40; UPDATE slot SET id = id - 100 WHERE id > 140;
         COMMIT;",
        &[("slot", "id")],
    )
    .await;
}

/// Keys whose type's operators live outside pg_catalog (citext in public) are chunked, matched
/// and tombstoned with the type's own operators, although pgshift's sessions pin search_path:
/// citext orders 'a…' before 'B…', text in the C collation the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_keys_use_their_own_operators() {
    let case = Case::start(
        "CREATE EXTENSION citext;
         CREATE TABLE ci (k citext PRIMARY KEY COLLATE \"C\", v int);
         CREATE TABLE pair (a citext COLLATE \"C\", b int, v int, PRIMARY KEY (a, b));",
        "INSERT INTO ci SELECT CASE WHEN g % 2 = 0 THEN 'B' ELSE 'a' END || lpad(g::text, 5, '0'), g FROM generate_series(1, 9000) g;
         INSERT INTO pair SELECT CASE WHEN g % 3 = 0 THEN 'X' ELSE 'y' END, g, g FROM generate_series(1, 7000) g;",
    )
    .await;
    case.write_and_compare(
        "UPDATE ci SET k = lower(k) WHERE v % 7 = 0; DELETE FROM ci WHERE v % 11 = 0;
         UPDATE pair SET a = upper(a) WHERE b % 5 = 0; DELETE FROM pair WHERE b % 13 = 0;",
        &[("ci", "k"), ("pair", "a, b")],
    )
    .await;
}

/// Capture fires for replica-role sessions, but never for pgshift's own (every pgshift session
/// carries pgshift's secret marker, see engine/pg/marker.rs): a reverse migration armed on the
/// new server must not record the forward apply, which would echo every change back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgshift_sessions_are_not_captured() {
    let case = Case::start("CREATE TABLE t (id int PRIMARY KEY, v text);", "").await;
    let schema = capture_schema(&case.src).await;
    let options = pgshift::engine::pg::options(&case.source.admin_dsn(), Some("app")).unwrap();
    let mut own = pgshift::engine::pg::connect("the source", &options)
        .await
        .unwrap();
    sqlx::raw_sql(
        "SET session_replication_role = replica;
         INSERT INTO public.t VALUES (1, 'pgshift''s own write');",
    )
    .execute(&mut own)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.event",
        pgshift_tests::quote_ident(&schema)
    ))
    .fetch_one(&case.src)
    .await
    .unwrap();
    assert_eq!(events, 0);
}

/// Issue 10, "tables without a primary key": a unique index over NOT NULL columns identifies a
/// row just as well and is used as the key (only an index's key columns, not its INCLUDE
/// columns). Updates, key changes and deletes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_over_not_null_columns_serves_as_the_key() {
    let case = Case::start(
        "CREATE TABLE account (tenant int NOT NULL, email text NOT NULL, balance int, note text,
                               UNIQUE (tenant, email));
         CREATE TABLE code (n int NOT NULL, label text, UNIQUE (n) INCLUDE (label));",
        "INSERT INTO account SELECT g % 3, 'user' || g || '@example.com', g, NULL FROM generate_series(1, 300) g;
         INSERT INTO code SELECT g, 'label ' || g FROM generate_series(1, 100) g;",
    )
    .await;
    case.write_and_compare(
        "UPDATE account SET balance = balance * 2 WHERE tenant = 1;
         UPDATE account SET email = upper(email) WHERE tenant = 2 AND balance < 50;
         DELETE FROM account WHERE balance > 250;
         UPDATE code SET label = NULL WHERE n < 10;
         UPDATE code SET n = n + 1000 WHERE n > 90;
         DELETE FROM code WHERE n = 50;",
        &[("account", "tenant, email"), ("code", "n")],
    )
    .await;
}
