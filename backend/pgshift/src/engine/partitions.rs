//! Engine layer: following a partitioned table's partitions on the source while a migration
//! runs.
//!
//! Row triggers reach every partition by themselves, but three things do not: rows a table held
//! before it was ATTACHed (no trigger saw them arrive), rows that leave with a DETACHed or
//! dropped partition (no trigger sees them go), and a TRUNCATE of a partition created moments
//! before (statement triggers are not cloned; the watch gives each partition its own). The
//! source watch compares the partitions with the list recorded at install
//! (`<schema>.partition`) and, for each change, writes into the event stream what the target
//! needs to end up with exactly the source's rows:
//!
//! - a partition that appeared: an `A` event with its bound (the target empties that range,
//!   unless the table is still being copied), then every row it holds as an upsert;
//! - a partition that went: a `T` event with the bound it had (the target empties that range),
//!   then every row the table now holds in that range as an upsert (rows the range's new home,
//!   a default partition say, already took).
//!
//! All in one source transaction that holds the whole table still: a throwaway row trigger on
//! the parent takes each partition's SHARE ROW EXCLUSIVE lock (the TRIGGER privilege is enough;
//! LOCK TABLE would need UPDATE), so no write lands between the range being read and the events
//! being recorded, and the partition list cannot change meanwhile. The trigger goes with its
//! function before commit. Waits for the lock are short; a busy table is tried again next time.

use sqlx::postgres::types::Oid;
use sqlx::{Connection, PgConnection};

use super::error::Context;
use super::{quote_ident, quote_literal, source, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

/// One partition as recorded or as found.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Partition {
    relid: Oid,
    name: String,
    leaf: bool,
    bound: Option<String>,
    /// The xmin of the partition's pg_inherits row: a new one after DETACH and ATTACH again.
    attached: Option<String>,
}

/// Records the partitions of `table` as they are now (at install, and after each change), and
/// forgets the notes of partitions seen meanwhile.
pub async fn record(conn: &mut PgConnection, schema: &str, table: &TableSpec) -> EngineResult<()> {
    let s = quote_ident(schema);
    super::pg::run_script(
        &mut *conn,
        &format!(
            "DELETE FROM {s}.partition WHERE table_no = {no};
             DELETE FROM {s}.partition_seen WHERE table_no = {no};",
            no = table.no
        ),
    )
    .await
    .context(|| "forgetting the recorded partitions".into())?;
    sqlx::query(&format!(
        "INSERT INTO {s}.partition (relid, table_no, name, leaf, bound, attached)
         SELECT p.relid, $1, format('%I.%I', n.nspname, c.relname), p.isleaf,
                coalesce(pg_get_partition_constraintdef(p.relid), 'true'),
                (SELECT i.xmin::text FROM pg_inherits i WHERE i.inhrelid = p.relid)
           FROM pg_partition_tree($2::regclass) p
           JOIN pg_class c ON c.oid = p.relid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE p.level > 0"
    ))
    .bind(table.no)
    .bind(table.sql_name())
    .execute(&mut *conn)
    .await
    .context(|| format!("recording the partitions of {}", table.display_name()))?;
    Ok(())
}

/// The partitions of `table` as the copy's source transaction sees them, read after its chunk
/// (while the chunk's locks keep any of them from being detached).
pub async fn listed(conn: &mut PgConnection, table: &TableSpec) -> EngineResult<Vec<Partition>> {
    found(conn, table).await
}

/// Notes partitions the copy read rows from that the watch has not followed yet, before those
/// rows reach the target: one attached and dropped between two looks of the watch still has its
/// rows taken off the target.
pub async fn note_seen(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
    partitions: &[Partition],
) -> EngineResult<()> {
    let s = quote_ident(schema);
    for p in partitions.iter().filter(|p| p.leaf) {
        sqlx::query(&format!(
            "INSERT INTO {s}.partition_seen (relid, table_no, name, bound)
             SELECT $1, $2, $3, $4
              WHERE NOT EXISTS (SELECT 1 FROM {s}.partition WHERE relid = $1)
                AND NOT EXISTS (SELECT 1 FROM {s}.partition_seen WHERE relid = $1)"
        ))
        .bind(p.relid)
        .bind(table.no)
        .bind(&p.name)
        .bind(&p.bound)
        .execute(&mut *conn)
        .await
        .context(|| format!("noting the partitions of {}", table.display_name()))?;
    }
    Ok(())
}

async fn found(conn: &mut PgConnection, table: &TableSpec) -> EngineResult<Vec<Partition>> {
    sqlx::query_as(
        "SELECT p.relid::oid AS relid, format('%I.%I', n.nspname, c.relname) AS name, p.isleaf AS leaf,
                coalesce(pg_get_partition_constraintdef(p.relid), 'true') AS bound,
                (SELECT i.xmin::text FROM pg_inherits i WHERE i.inhrelid = p.relid) AS attached
           FROM pg_partition_tree($1::regclass) p
           JOIN pg_class c ON c.oid = p.relid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE p.level > 0",
    )
    .bind(table.sql_name())
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("listing the partitions of {}", table.display_name()))
}

/// relid, name, leaf, bound, attached, followed.
type RecordedRow = (Oid, String, bool, Option<String>, Option<String>, bool);

/// The recorded partitions of `table`: (followed by the watch, or only noted as seen).
async fn recorded(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
) -> EngineResult<Vec<(Partition, bool)>> {
    let s = quote_ident(schema);
    let rows: Vec<RecordedRow> =
        sqlx::query_as(&format!(
            "SELECT relid, name, leaf, bound, attached, true FROM {s}.partition WHERE table_no = $1
             UNION ALL
             SELECT DISTINCT ON (relid) relid, name, true, bound, NULL, false FROM {s}.partition_seen
              WHERE table_no = $1 AND relid NOT IN (SELECT relid FROM {s}.partition)"
        ))
        .bind(table.no)
        .fetch_all(&mut *conn)
        .await
        .context(|| "reading the recorded partitions".into())?;
    Ok(rows
        .into_iter()
        .map(|(relid, name, leaf, bound, attached, followed)| {
            (
                Partition {
                    relid,
                    name,
                    leaf,
                    bound,
                    attached,
                },
                followed,
            )
        })
        .collect())
}

/// (appeared, gone) between what was recorded and what is found. A partition only noted as
/// seen still counts as appeared (its earlier rows may never have been captured); one that is
/// gone counts as gone whoever recorded it; one detached and attached again (a new pg_inherits
/// row) counts as both: rows may have changed while it was out, unseen.
fn changes(
    recorded: &[(Partition, bool)],
    found: &[Partition],
) -> (Vec<Partition>, Vec<Partition>) {
    let same = |r: &Partition, f: &Partition| r.relid == f.relid && r.attached == f.attached;
    let appeared = found
        .iter()
        .filter(|f| !recorded.iter().any(|(r, followed)| *followed && same(r, f)))
        .cloned()
        .collect();
    let gone = recorded
        .iter()
        .filter(|(r, followed)| {
            !found.iter().any(|f| {
                if *followed {
                    same(r, f)
                } else {
                    r.relid == f.relid
                }
            })
        })
        .map(|(r, _)| r.clone())
        .collect();
    (appeared, gone)
}

/// Writes `op` events for table `no`, one per value `select` returns, into the current event
/// table (the same generation rule as the capture triggers).
async fn record_events(
    conn: &mut PgConnection,
    schema: &str,
    no: i32,
    op: &str,
    select: &str,
) -> EngineResult<u64> {
    let s = quote_ident(schema);
    let generation = quote_literal(&format!("{s}.generation_seq"));
    let done = sqlx::query(&format!(
        "INSERT INTO {s}.event (ev_gen, ev_txid, ev_table, ev_op, ev_data)
         SELECT (pg_sequence_last_value({generation}::regclass) % 3)::smallint, txid_current(),
                $1, $2::\"char\", e.d
           FROM ({select}) AS e(d)"
    ))
    .bind(no)
    .bind(op)
    .execute(&mut *conn)
    .await
    .context(|| "recording partition events".into())?;
    Ok(done.rows_affected())
}

/// Writes a 'U' event for every row `rows` (a FROM clause naming its rows `x`; `what` in words)
/// yields. A row
/// whose text form cannot be built (over 1 GB) fails the one statement that does them all; then
/// every row goes on its own through capture_row (install.sql), which sends such a row in parts.
async fn record_rows(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
    rows: &str,
    what: &str,
) -> EngineResult<u64> {
    let savepoint = |sql: &'static str| sqlx::query(sql);
    savepoint("SAVEPOINT pgshift_rows")
        .execute(&mut *conn)
        .await
        .context(|| "opening a savepoint".into())?;
    let all = record_events(
        conn,
        schema,
        table.no,
        "U",
        &format!("SELECT (x.*)::text FROM {rows}"),
    )
    .await;
    match all {
        Ok(n) => {
            savepoint("RELEASE SAVEPOINT pgshift_rows")
                .execute(&mut *conn)
                .await
                .context(|| "closing a savepoint".into())?;
            Ok(n)
        }
        // Out of memory, over a size limit, or palloc's "invalid memory alloc request size".
        Err(err) if matches!(err.sqlstate().as_deref(), Some("54000" | "53200" | "XX000")) => {
            tracing::info!(error = %err, "a row's text is too large to send whole; sending rows one by one");
            savepoint("ROLLBACK TO SAVEPOINT pgshift_rows")
                .execute(&mut *conn)
                .await
                .context(|| "rolling back to a savepoint".into())?;
            let s = quote_ident(schema);
            let done = sqlx::query(&format!(
                "SELECT {s}.capture_row($1, x, 'a row of ' || $2, ({})::text) FROM {rows}",
                source::key_row("x", table)
            ))
            .bind(table.no)
            .bind(what)
            .execute(&mut *conn)
            .await
            .context(|| "recording partition rows one by one".into())?;
            Ok(done.rows_affected())
        }
        Err(err) => Err(err),
    }
}

/// The payload of a truncate-like event: the name, and the bound on the next line.
fn payload(p: &Partition) -> String {
    let mut out = quote_literal(&p.name);
    if let Some(bound) = &p.bound {
        out = format!("{out} || E'\\n' || {}", quote_literal(bound));
    }
    format!("SELECT {out}")
}

/// Follows every partitioned table of the migration; returns what changed, in words.
pub async fn follow(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
) -> EngineResult<Vec<String>> {
    let schema = migration.schema_name();
    let mut said = Vec::new();
    for table in migration.tables.iter().filter(|t| t.partitioned) {
        let (appeared, gone) = changes(
            &recorded(conn, &schema, table).await?,
            &found(conn, table).await?,
        );
        if appeared.is_empty() && gone.is_empty() {
            continue;
        }
        match follow_table(conn, &schema, table).await {
            Ok(mut words) => said.append(&mut words),
            Err(err) if err.sqlstate().as_deref() == Some("55P03") => {
                tracing::debug!(table = %table.display_name(), error = %err, "partitions changed but the table is busy; trying again later");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(said)
}

async fn follow_table(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
) -> EngineResult<Vec<String>> {
    let s = quote_ident(schema);
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the source".into())?;
    sqlx::query("SET LOCAL lock_timeout = '100ms'")
        .execute(&mut *tx)
        .await
        .context(|| "setting lock_timeout".into())?;
    let hold = quote_ident(&format!("!{schema}_hold"));
    super::pg::run_script(
        &mut tx,
        &format!(
            "CREATE FUNCTION {s}.hold() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
             CREATE TRIGGER {hold} AFTER INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {s}.hold();",
            table.sql_name()
        ),
    )
    .await
    .context(|| format!("holding {} still", table.display_name()))?;
    let (appeared, gone) = changes(
        &recorded(&mut tx, schema, table).await?,
        &found(&mut tx, table).await?,
    );
    let mut said = Vec::new();
    for p in &gone {
        record_events(&mut tx, schema, table.no, "T", &payload(p)).await?;
        let rows = match &p.bound {
            // The bound is PostgreSQL's own text, recorded by pgshift itself.
            Some(bound) => {
                record_rows(
                    &mut tx,
                    schema,
                    table,
                    &format!("{} x WHERE {bound}", table.sql_name()),
                    &format!("{} in the range of {}", table.display_name(), p.name),
                )
                .await?
            }
            None => 0,
        };
        said.push(format!(
            "partition {} left {}; its range was emptied on the target and {rows} row(s) now in that range sent again",
            p.name,
            table.display_name()
        ));
    }
    for p in &appeared {
        source::add_statement_triggers(&mut tx, schema, table, &p.name).await?;
        if !p.leaf {
            said.push(format!(
                "partition {} joined {}",
                p.name,
                table.display_name()
            ));
            continue;
        }
        record_events(&mut tx, schema, table.no, "A", &payload(p)).await?;
        let rows = record_rows(
            &mut tx,
            schema,
            table,
            &format!("ONLY {} x", p.name),
            &p.name,
        )
        .await?;
        said.push(format!(
            "partition {} joined {} holding {rows} row(s), sent to the target",
            p.name,
            table.display_name()
        ));
    }
    record(&mut tx, schema, table).await?;
    sqlx::query(&format!("DROP FUNCTION {s}.hold() CASCADE"))
        .execute(&mut *tx)
        .await
        .context(|| "releasing the table".into())?;
    tx.commit().await.context(|| {
        format!(
            "recording the partition changes of {}",
            table.display_name()
        )
    })?;
    Ok(said)
}
