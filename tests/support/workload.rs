//! A schema with the hard cases (FK-linked tables, composite and changing keys, partitions,
//! generated and identity columns, quoted and unicode names, every kind of built-in type) and a
//! randomized workload of concurrent sessions writing to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

/// Created identically on the source and the target.
pub const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE customer (
    id       bigint PRIMARY KEY,
    name     text NOT NULL,
    email    text UNIQUE,
    mood     mood,
    tags     text[],
    meta     jsonb,
    photo    bytea,
    balance  numeric,
    score    double precision,
    ratio    real,
    active   boolean,
    born     date,
    seen     timestamptz,
    local    timestamp,
    span     int4range,
    period   tstzrange,
    level    positive,
    code     char(4),
    note     varchar(40),
    ip       inet,
    uid      uuid,
    during   interval,
    flags    bit varying(8),
    matrix   integer[][],
    doc      text,
    updated  timestamptz
);
CREATE TABLE "Order Items" (
    "Order Id"  bigint,
    "Line"      integer,
    customer_id bigint NOT NULL REFERENCES customer (id) ON UPDATE CASCADE ON DELETE CASCADE,
    qty         integer NOT NULL,
    price       numeric(12, 2) NOT NULL,
    total       numeric GENERATED ALWAYS AS (qty * price) STORED,
    PRIMARY KEY ("Order Id", "Line")
);
CREATE TABLE ledger (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint REFERENCES customer (id) ON UPDATE CASCADE ON DELETE CASCADE,
    amount      numeric NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE region_event (
    id      bigint,
    region  text,
    payload jsonb,
    PRIMARY KEY (region, id)
) PARTITION BY LIST (region);
CREATE TABLE region_event_eu PARTITION OF region_event FOR VALUES IN ('eu');
CREATE TABLE region_event_us PARTITION OF region_event FOR VALUES IN ('us');
CREATE TABLE region_event_other PARTITION OF region_event DEFAULT;
CREATE TABLE "ünïcödé Tåble" ("ключ" integer PRIMARY KEY, "värde" text);
-- No key at all: whole-row identity, duplicate rows included.
CREATE TABLE visit_log (customer_id bigint, page text, hits numeric, at date, extra jsonb);
-- The application's own triggers, changing rows the firing statement also changed while that
-- statement's captures are still queued: a ripple to the next customer, and a deleted row that
-- puts its neighbour's key back. (On the target they never fire for replicated rows.)
CREATE FUNCTION ripple() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND NEW.note LIKE 'ripple%' THEN
        UPDATE customer SET score = coalesce(score, 0) + 1, note = 'rippled by ' || NEW.id
         WHERE id = NEW.id + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ripple AFTER UPDATE ON customer FOR EACH ROW EXECUTE FUNCTION ripple();
CREATE FUNCTION phoenix() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND OLD."värde" LIKE 'phoenix%' THEN
        INSERT INTO "ünïcödé Tåble" VALUES (OLD."ключ" + 1, 'reborn') ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER phoenix AFTER DELETE ON "ünïcödé Tåble" FOR EACH ROW EXECUTE FUNCTION phoenix();
-- Changes rows of the keyless table its statement also changes, before their captures fire.
CREATE FUNCTION echo() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 AND NEW.page LIKE 'echo%' THEN
        UPDATE visit_log SET hits = hits + 1, page = 'echoed' WHERE customer_id = NEW.customer_id + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER echo AFTER UPDATE ON visit_log FOR EACH ROW EXECUTE FUNCTION echo();
"#;

/// Tables to compare, with their ORDER BY.
pub const TABLES: &[(&str, &str)] = &[
    ("customer", "id"),
    ("\"Order Items\"", "\"Order Id\", \"Line\""),
    ("ledger", "id"),
    ("region_event", "region, id"),
    ("\"ünïcödé Tåble\"", "\"ключ\""),
    // Duplicates compare as a multiset: every row's text, in one order.
    ("visit_log", "t::text COLLATE \"C\""),
];

/// A trigger on the target that would corrupt replicated rows if it fired.
pub const TARGET_TRIGGER: &str = r#"
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.name := 'TRIGGER FIRED'; RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON customer FOR EACH ROW EXECUTE FUNCTION stamp();
"#;

fn customer_values(rng: &mut StdRng, id: i64) -> String {
    let moods = ["'sad'", "'ok'", "'happy'", "'ecstatic'", "NULL"];
    let big = if rng.gen_bool(0.05) {
        // Large enough to be TOASTed.
        format!("repeat('toast{}', 3000)", rng.gen_range(0..1000))
    } else {
        "'small'".into()
    };
    let numerics = [
        "'NaN'",
        "'123456789012345678901234567890.123456789'",
        "0",
        "-1.5",
        "NULL",
    ];
    // Values that need every digit (0.1 + 0.2, 1 / 3) or have no JSON number form (-0, NaN).
    let floats = [
        "'Infinity'",
        "'-Infinity'",
        "'NaN'",
        "0.1::float8 + 0.2",
        "-0",
        "1e300",
        "NULL",
    ];
    let reals = [
        "'Infinity'",
        "'NaN'",
        "1 / 3.0::real",
        "-0",
        "3.4e38",
        "1.17549435e-38",
        "NULL",
    ];
    format!(
        "({id}, 'name {id} ''quoted'' \\ back', 'c{id}-{}@example.com', {}, ARRAY['a', NULL, 'b,\"c\"', '{}'], \
         jsonb_build_object('k', {}, 'nested', jsonb_build_object('arr', ARRAY[1,2,3]), 'u', 'ü\"'), \
         decode('00ff{:02x}10', 'hex'), {}, {}, {}::real, {}, date '2001-02-03' + {}, \
         timestamptz '2020-01-01 00:00:00.123456+00' + interval '{} seconds', timestamp 'infinity', \
         int4range({}, {}), tstzrange(now() - interval '1 day', NULL), {}, 'ab', 'note {}', '10.0.{}.1/32', \
         gen_random_uuid(), interval '-1 day +{} minutes 3.5 seconds', B'1010', ARRAY[[1,2],[3,{}]], {big}, now())",
        rng.gen_range(0..1_000_000),
        moods[rng.gen_range(0..moods.len())],
        rng.gen_range(0..100),
        rng.gen_range(0..1000),
        rng.gen_range(0..256),
        numerics[rng.gen_range(0..numerics.len())],
        floats[rng.gen_range(0..floats.len())],
        reals[rng.gen_range(0..reals.len())],
        ["true", "false", "NULL"][rng.gen_range(0..3)],
        rng.gen_range(0..5000),
        rng.gen_range(0..100_000),
        rng.gen_range(0..10),
        rng.gen_range(10..20),
        rng.gen_range(1..100),
        rng.gen_range(0..100),
        rng.gen_range(0..255),
        rng.gen_range(0..100),
        rng.gen_range(0..100),
    )
}

const CUSTOMER_COLS: &str =
    "(id, name, email, mood, tags, meta, photo, balance, score, ratio, active, born, seen, \
    local, span, period, level, code, note, ip, uid, during, flags, matrix, doc, updated)";

/// Loads `customers` customers with a few items, ledger rows and events each.
pub async fn seed(pool: &PgPool, customers: i64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut id = 1;
    while id <= customers {
        let end = (id + 500).min(customers + 1);
        let values: Vec<String> = (id..end).map(|i| customer_values(&mut rng, i)).collect();
        exec(
            pool,
            &format!(
                "INSERT INTO customer {CUSTOMER_COLS} VALUES {}",
                values.join(", ")
            ),
        )
        .await
        .unwrap();
        exec(
            pool,
            &format!(
                "INSERT INTO \"Order Items\" SELECT c, l, c, l * 2, l * 1.25 FROM generate_series({id}, {}) c, generate_series(1, 3) l;
                 INSERT INTO ledger (customer_id, amount) SELECT c, c * 0.5 FROM generate_series({id}, {}) c;
                 INSERT INTO region_event SELECT c, (ARRAY['eu','us','apac'])[1 + c % 3], jsonb_build_object('c', c) FROM generate_series({id}, {}) c;
                 INSERT INTO \"ünïcödé Tåble\" SELECT c, 'wert ' || c FROM generate_series({id}, {}) c;
                 INSERT INTO visit_log SELECT c, 'home', 1.0, date '2020-01-01' + (c % 50), CASE WHEN c % 7 = 0 THEN NULL ELSE jsonb_build_object('c', c % 5) END
                   FROM generate_series({id}, {}) c, generate_series(1, 1 + c % 3) d;",
                end - 1,
                end - 1,
                end - 1,
                end - 1,
                end - 1
            ),
        )
        .await
        .unwrap();
        id = end;
    }
    exec(pool, "ANALYZE").await.unwrap();
}

async fn exec(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(pool).await.map(|_| ())
}

/// Counters of what the workload did.
#[derive(Default)]
pub struct WorkloadStats {
    pub committed: AtomicU64,
    pub rolled_back: AtomicU64,
    pub failed: AtomicU64,
}

/// One random transaction of 1 to 4 operations.
fn random_transaction(rng: &mut StdRng, next_id: &AtomicU64, max_id: i64) -> Vec<String> {
    let mut ops = Vec::new();
    for _ in 0..rng.gen_range(1..=4) {
        let c = rng.gen_range(1..=max_id);
        let op = match rng.gen_range(0..122) {
            0..=14 => {
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                format!(
                    "INSERT INTO customer {CUSTOMER_COLS} VALUES {}; INSERT INTO \"Order Items\" VALUES ({id}, 1, {id}, 1, 9.99)",
                    customer_values(rng, id)
                )
            }
            15..=34 => format!(
                "UPDATE customer SET balance = coalesce(balance, 0) + 1, mood = 'happy', tags = tags || 'x'::text, \
                 meta = meta || '{{\"touched\": true}}', updated = now() WHERE id = {c}"
            ),
            // Incompressible, so the value is stored out of line (TOAST).
            35..=39 => format!(
                "UPDATE customer SET doc = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {})) WHERE id = {c}",
                rng.gen_range(100..400)
            ),
            // Primary-key change, cascading to the items and ledger on the source.
            40..=44 => {
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                format!("UPDATE customer SET id = {id} WHERE id = {c}")
            }
            45..=49 => format!("DELETE FROM customer WHERE id = {c}"),
            50..=59 => format!(
                "UPDATE \"Order Items\" SET qty = qty + 1, price = price * 1.1 WHERE customer_id = {c}"
            ),
            60..=64 => format!("UPDATE \"Order Items\" SET \"Line\" = \"Line\" + 10 WHERE \"Order Id\" = {c}"),
            65..=69 => format!("DELETE FROM \"Order Items\" WHERE \"Order Id\" = {c} AND \"Line\" = 2"),
            70..=79 => format!("INSERT INTO ledger (customer_id, amount) SELECT id, 1.5 FROM customer WHERE id = {c}"),
            // Moves rows between partitions.
            80..=84 => format!(
                "UPDATE region_event SET region = (ARRAY['eu','us','apac'])[1 + (id + {}) % 3], payload = payload || '{{\"m\":1}}' WHERE id = {c}",
                rng.gen_range(0..3)
            ),
            85..=87 => format!("INSERT INTO region_event_eu VALUES ({}, 'eu', '{{}}') ON CONFLICT DO NOTHING", 1_000_000 + c),
            88..=91 => format!("UPDATE \"ünïcödé Tåble\" SET \"värde\" = \"värde\" || 'ß' WHERE \"ключ\" = {c}"),
            92..=93 => format!("DELETE FROM \"ünïcödé Tåble\" WHERE \"ключ\" = {c}"),
            94 => "TRUNCATE \"ünïcödé Tåble\"".into(),
            95..=96 => format!("INSERT INTO \"ünïcödé Tåble\" VALUES ({c}, 'neu') ON CONFLICT (\"ключ\") DO UPDATE SET \"värde\" = 'upsert'"),
            // Application triggers change rows this statement also changed (see SCHEMA).
            100..=104 => format!(
                "UPDATE customer SET note = 'ripple {}', updated = now() WHERE id BETWEEN {c} AND {c} + 3",
                rng.gen_range(0..100)
            ),
            105..=107 => format!(
                "UPDATE \"ünïcödé Tåble\" SET \"värde\" = 'phoenix' WHERE \"ключ\" BETWEEN {c} AND {c} + 2; \
                 DELETE FROM \"ünïcödé Tåble\" WHERE \"ключ\" BETWEEN {c} AND {c} + 2"
            ),
            // Partitions come and go while rows are written (pg_partman's daily routine, an
            // archive detached, a table loaded aside and attached). Region values r…/s… are
            // never written otherwise, so no default partition holds rows of their range.
            110 => {
                let n = next_id.fetch_add(1, Ordering::Relaxed);
                // Sometimes truncated at once, before the source watch can give it its
                // statement triggers (the truncate itself goes uncaptured).
                let truncated = if rng.gen_bool(0.5) {
                    format!("; TRUNCATE region_event_r{n}; INSERT INTO region_event VALUES (7, 'r{n}', '{{}}')")
                } else {
                    String::new()
                };
                format!(
                    "CREATE TABLE region_event_r{n} PARTITION OF region_event FOR VALUES IN ('r{n}'); \
                     INSERT INTO region_event SELECT g, 'r{n}', '{{\"new\": 1}}' FROM generate_series(1, 20) g{truncated}"
                )
            }
            111 => {
                let n = next_id.fetch_add(1, Ordering::Relaxed);
                format!(
                    "CREATE TABLE region_event_s{n} (LIKE region_event); \
                     INSERT INTO region_event_s{n} SELECT g, 's{n}', '{{\"aside\": 1}}' FROM generate_series(1, 20) g; \
                     ALTER TABLE region_event ATTACH PARTITION region_event_s{n} FOR VALUES IN ('s{n}')"
                )
            }
            112..=113 => {
                let how = if rng.gen_bool(0.5) {
                    "format('ALTER TABLE region_event DETACH PARTITION %I', r)"
                } else {
                    "format('DROP TABLE %I', r)"
                };
                format!(
                    "DO $$ DECLARE r text; BEGIN \
                       SELECT c.relname INTO r FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                        WHERE i.inhparent = 'region_event'::regclass AND c.relname ~ '^region_event_[rs][0-9]+$' \
                        ORDER BY random() LIMIT 1; \
                       IF r IS NOT NULL THEN EXECUTE {how}; END IF; END $$"
                )
            }
            // A burst of wide rows (100 to 600 kB each, incompressible) amid narrow ones: the
            // worker's chunks must stay within their byte budget whatever came before.
            97 => format!(
                "UPDATE customer SET doc = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {})) \
                 WHERE id BETWEEN {c} AND {c} + 2",
                rng.gen_range(3_000..20_000)
            ),
            // The keyless table: duplicates added and removed one at a time, values respelled
            // (1.0 → 1.00), nested changes of rows the statement changes (see echo in SCHEMA).
            114..=115 => format!(
                "INSERT INTO visit_log VALUES ({c}, 'p{}', 1.0, date '2021-01-01', '{{\"d\": 1}}'), ({c}, 'p{}', 1.0, date '2021-01-01', '{{\"d\": 1}}')",
                c % 3, c % 3
            ),
            116 => format!(
                "UPDATE visit_log SET hits = hits + 1, page = 'echo' WHERE customer_id BETWEEN {c} AND {c} + 2"
            ),
            117 => format!(
                "DELETE FROM visit_log WHERE ctid = (SELECT ctid FROM visit_log WHERE customer_id = {c} LIMIT 1)"
            ),
            118 => format!(
                "UPDATE visit_log SET hits = 1.00, extra = NULL WHERE ctid = (SELECT ctid FROM visit_log WHERE customer_id = {c} LIMIT 1)"
            ),
            119 => format!("UPDATE visit_log SET at = NULL, page = page || 'x' WHERE customer_id = {c}"),
            120 => format!("DELETE FROM visit_log WHERE customer_id = {c}"),
            121 => if rng.gen_bool(0.2) {
                "TRUNCATE visit_log".into()
            } else {
                format!("INSERT INTO visit_log SELECT customer_id, page, hits, at, extra FROM visit_log WHERE customer_id = {c}")
            },
            // Swap two customers' unique emails within one transaction.
            _ => format!(
                "UPDATE customer SET email = 'swap-' || id WHERE id = {c}; UPDATE customer SET email = 'c{c}-swapped@example.com' WHERE id = {}",
                rng.gen_range(1..=max_id)
            ),
        };
        ops.push(op);
    }
    ops
}

/// Runs `sessions` concurrent writers until `stop` is set. About one transaction in ten rolls
/// back on purpose; errors from conflicts between sessions (deadlocks, unique violations) roll
/// back too and are counted.
pub fn spawn_workload(
    dsn: String,
    sessions: usize,
    first_new_id: i64,
    max_id: i64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (Arc<WorkloadStats>, Vec<tokio::task::JoinHandle<()>>) {
    let stats = Arc::new(WorkloadStats::default());
    let next_id = Arc::new(AtomicU64::new(first_new_id as u64));
    let handles = (0..sessions)
        .map(|s| {
            let (dsn, stats, stop, next_id) =
                (dsn.clone(), stats.clone(), stop.clone(), next_id.clone());
            tokio::spawn(async move {
                // One connection per session, so a failed script's ROLLBACK reaches its transaction.
                let pool = loop {
                    match sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect(&dsn)
                        .await
                    {
                        Ok(p) => break p,
                        Err(_) if !stop.load(Ordering::Relaxed) => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Err(_) => return,
                    }
                };
                let mut rng = StdRng::seed_from_u64(seed + s as u64);
                while !stop.load(Ordering::Relaxed) {
                    let ops = random_transaction(&mut rng, &next_id, max_id);
                    let rollback = rng.gen_bool(0.1);
                    // Output settings an application may change: capture must not depend on them.
                    // Some transactions also pose as pgshift's own sessions (which capture skips):
                    // they must be captured all the same.
                    let marker = ["", "on", "forged token"][rng.gen_range(0..3)];
                    let sql = format!(
                        "SET extra_float_digits = 0; SET intervalstyle = 'sql_standard'; SET bytea_output = 'escape'; \
                         SET pgshift.replicating = '{marker}'; BEGIN; {}; {}",
                        ops.join("; "),
                        if rollback { "ROLLBACK" } else { "COMMIT" }
                    );
                    match exec(&pool, &sql).await {
                        Ok(()) if rollback => stats.rolled_back.fetch_add(1, Ordering::Relaxed),
                        Ok(()) => stats.committed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            // The failed script left its transaction open and aborted.
                            let _ = exec(&pool, "ROLLBACK").await;
                            stats.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..5))).await;
                }
            })
        })
        .collect();
    (stats, handles)
}
