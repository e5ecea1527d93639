//! Engine layer: applying events to the target. Speed comes from grouping: within a chunk,
//! each table's consecutive upserts become one `INSERT ... ON CONFLICT` and its consecutive
//! deletes one `DELETE ... USING`, each bound as one array of record texts split by bytes; a
//! row sent in parts is written from them ([`wide`]). Tables are independent of each other
//! because the apply session runs with `session_replication_role = replica` (no trigger or
//! foreign-key action fires), and every batch commits the source's state at a tick, so
//! foreign keys hold after each commit.

use std::collections::HashMap;

use sqlx::PgConnection;

pub(super) mod keyless;
pub(super) mod wide;

use super::batch::{Event, Op};
use super::error::Context;
use super::partition_bound::{is_plain, TruncatedRelation};
use super::{key_ops, quote_ident, row_format, EngineError, EngineResult};
use crate::store::TableSpec;

/// Prepared SQL for one table. Every statement reads its rows from one `text[]` parameter of
/// record texts, parsed once through the table's row type (see `row_format`).
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub no: i32,
    pub display: String,
    /// The replicated table, quoted.
    pub(super) table: String,
    /// The source's column names: what a partition bound may mention (see partition_bound).
    pub(super) columns: Vec<String>,
    /// Upsert statements run in order on the same parameter.
    upsert: Vec<String>,
    delete: String,
    /// Deletes the old rows of key changes where the target row is still exactly that row.
    delete_unchanged: String,
    /// `TRUNCATE` or `DELETE` of the whole table.
    pub(super) truncate: String,
    /// Another table's foreign key points here: a truncated partition is emptied by DELETE.
    pub(super) referenced_by_others: bool,
    tombstone: String,
    reset_copy: String,
    /// Remembers the keys of the rows of `@rows@` (a FROM item) as deleted.
    remember_rows: String,
    /// Writes a row sent in parts: [`Self::upsert`] over the row [`wide`] assembles.
    assemble: Vec<String>,
    /// The row type's name, and the positions of the columns a row sent in parts must give
    /// (the written ones and the key).
    row_type: String,
    assembled_columns: Vec<usize>,
    /// A table without a key: its statements (whole-row identity, [`keyless`]).
    keyless: Option<keyless::KeylessSql>,
}

/// What the target's catalog says about a table that changes how it is written.
#[derive(Debug, Clone, Default)]
pub struct TargetFacts {
    /// Another table's foreign key points here: TRUNCATE is refused, DELETE is not.
    pub referenced_by_others: bool,
    /// A deferrable primary key or unique constraint cannot arbitrate ON CONFLICT.
    pub deferrable_key: bool,
    /// The key columns' own operators on the target.
    pub key_ops: Vec<key_ops::ColumnOps>,
    /// A table without a key: its written columns that are NOT NULL on the target with an
    /// ordinary equality there (see [`keyless`]).
    pub keyless_match: Vec<String>,
}

impl TablePlan {
    pub fn new(schema: &str, table: &TableSpec, facts: &TargetFacts) -> Self {
        let TargetFacts {
            referenced_by_others,
            deferrable_key,
            key_ops: ops,
            keyless_match,
        } = facts;
        let (referenced_by_others, deferrable_key) = (*referenced_by_others, *deferrable_key);
        let t = table.sql_name();
        // ONLY: an inheritance parent's statements must not reach its children's rows.
        let own_rows = table.relation_only();
        let q = |c: &str| quote_ident(c);
        let f = |c: &str| format!("r.{}", row_format::field_of(table, c));
        let fields = (0..table.columns.len())
            .map(row_format::field)
            .collect::<Vec<_>>()
            .join(", ");
        // Rows in the parameter's order; `n` numbers them, so the last version of a key wins.
        let rows = format!(
            "unnest($1::text[]::{}[]) WITH ORDINALITY AS r({fields}, n)",
            row_format::row_type(schema, table)
        );
        let writable: Vec<&str> = table.writable_columns().map(|c| c.name.as_str()).collect();
        let cols = writable.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        let values = writable.iter().map(|c| f(c)).collect::<Vec<_>>().join(", ");
        let r_keys = table
            .key
            .iter()
            .map(|k| f(k))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = table
            .key
            .iter()
            .map(|k| q(k))
            .collect::<Vec<_>>()
            .join(", ");
        let key_match = |other: &str| {
            let left: Vec<String> = table.key.iter().map(|k| format!("t.{}", q(k))).collect();
            let right: Vec<String> = table
                .key
                .iter()
                .map(|k| format!("{other}.{}", row_format::field_of(table, k)))
                .collect();
            key_ops::key_equal(ops, &left, &right)
        };
        // The last version of each key; DISTINCT ON compares with the key's own equality.
        let latest =
            format!("SELECT DISTINCT ON ({r_keys}) r.* FROM {rows} ORDER BY {r_keys}, n DESC");
        let identity_always = table.columns.iter().any(|c| c.identity_always);
        let overriding = if identity_always {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        // The statements that write the rows `source` yields (fields named like the row type's)
        // over the rows the target has under the same keys.
        let upsert_from = |source: &str| -> Vec<String> {
            if identity_always || deferrable_key {
                // Identity ALWAYS columns cannot be set by an UPDATE, and a deferrable key cannot
                // arbitrate ON CONFLICT: replace the row instead.
                vec![
                    format!(
                        "DELETE FROM {own_rows} AS t USING ({source}) AS r WHERE {}",
                        key_match("r")
                    ),
                    format!(
                        "INSERT INTO {t} ({cols}){overriding} SELECT {values} FROM ({source}) AS r"
                    ),
                ]
            } else {
                // The key columns are set too: an equal key written differently (1.0 → 1.00, a
                // citext key changing case) must take the source's spelling.
                let set = writable
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", q(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![format!(
                    "INSERT INTO {t} AS t ({cols}) SELECT {values} FROM ({source}) AS r
                     ON CONFLICT ({keys}) DO UPDATE SET {set}"
                )]
            }
        };
        let upsert = upsert_from(&latest);
        let assemble = upsert_from(wide::ROW);
        let delete = format!(
            "DELETE FROM {own_rows} AS t USING {rows} WHERE {}",
            key_match("r")
        );
        // Every stored column, compared as text rendered in this session (types without an
        // equality operator included; -0 and 0 differ).
        let (now, then): (Vec<String>, Vec<String>) = table
            .writable_columns()
            .map(|c| {
                (
                    format!("t.{}::text", q(&c.name)),
                    format!("{}::text", f(&c.name)),
                )
            })
            .unzip();
        let delete_unchanged = format!(
            "DELETE FROM {own_rows} AS t USING {rows} WHERE {} AND ROW({}) IS NOT DISTINCT FROM ROW({})",
            key_match("r"),
            now.join(", "),
            then.join(", ")
        );
        // TRUNCATE is refused when another table's foreign key points here; with
        // session_replication_role = replica a DELETE has the same effect without cascading.
        let truncate = match (referenced_by_others, table.partitioned) {
            (true, _) => format!("DELETE FROM {own_rows}"),
            (false, true) => format!("TRUNCATE {t}"),
            (false, false) => format!("TRUNCATE ONLY {t}"),
        };
        let tombstone = format!(
            "INSERT INTO {} ({keys}) SELECT {r_keys} FROM {rows} ON CONFLICT DO NOTHING",
            row_format::tombstone_table(schema, table)
        );
        let remember_rows = format!(
            "INSERT INTO {} ({keys}) SELECT {keys} FROM {ROWS} ON CONFLICT DO NOTHING",
            row_format::tombstone_table(schema, table)
        );
        // A truncate while the table is still being copied: the copy's older snapshots would bring
        // rows back, so the copy starts again (a new epoch makes the running copy discard its chunk).
        let reset_copy = format!(
            "WITH reset AS (
                 UPDATE {s}.table_state
                    SET state = 'pending', copy_epoch = copy_epoch + 1, copy_position = NULL, rows_copied = 0
                  WHERE table_no = $1 AND state IN ('pending', 'copying')
              RETURNING table_no)
             DELETE FROM {tombstones} WHERE EXISTS (SELECT 1 FROM reset)",
            s = quote_ident(schema),
            tombstones = row_format::tombstone_table(schema, table),
        );
        Self {
            no: table.no,
            display: table.display_name(),
            table: t,
            columns: table.columns.iter().map(|c| c.name.clone()).collect(),
            upsert,
            delete,
            delete_unchanged,
            truncate,
            referenced_by_others,
            tombstone,
            reset_copy,
            remember_rows,
            assemble,
            row_type: row_format::row_type(schema, table),
            assembled_columns: table
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.generated || table.key.contains(&c.name))
                .map(|(i, _)| i)
                .collect(),
            keyless: table
                .key
                .is_empty()
                .then(|| keyless::KeylessSql::new(schema, table, keyless_match, &own_rows)),
        }
    }

    /// Whether the table has no key and is replicated with whole-row identity.
    pub fn is_keyless(&self) -> bool {
        self.keyless.is_some()
    }

    fn keyless_sql(&self) -> &keyless::KeylessSql {
        self.keyless
            .as_ref()
            .expect("keyless statements are asked of a table without a key")
    }
}

/// Leaves a tombstone for every key the target holds in the range of the partition `data`
/// names (an event payload): the rows [`super::truncate::replay`] is about to empty.
async fn remember_range(conn: &mut PgConnection, plan: &TablePlan, data: &str) -> EngineResult<()> {
    let TruncatedRelation { relation, bound } = TruncatedRelation::parse(data);
    let columns: Vec<&str> = plan.columns.iter().map(String::as_str).collect();
    let rows = match bound.filter(|b| is_plain(b, &columns)) {
        // Checked by is_plain: only this table's columns, literals, casts and operators.
        Some(bound) => format!("{} WHERE {bound}", plan.table),
        None => {
            // A bound the target cannot evaluate: replay empties a partition of that name, if
            // this table has one.
            let partition: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_partition_tree($2::regclass) p
                                 WHERE p.relid = to_regclass($1) AND p.level > 0)",
            )
            .bind(relation)
            .bind(&plan.table)
            .fetch_one(&mut *conn)
            .await
            .context(|| format!("looking for {relation} on the target"))?;
            if !partition {
                return Ok(());
            }
            // The name came from the source's own format('%I.%I'); it names a relation here.
            relation.to_string()
        }
    };
    sqlx::query(&plan.remember_rows.replace(ROWS, &rows))
        .execute(&mut *conn)
        .await
        .context(|| format!("remembering the keys of {relation} as deleted"))?;
    Ok(())
}

/// Where [`TablePlan::remember_rows`] reads keys from.
const ROWS: &str = "@rows@";

/// How to apply one chunk.
pub struct ChunkContext<'a> {
    pub plans: &'a HashMap<i32, TablePlan>,
    /// Tables whose deletes must leave tombstones (their copy is not finished).
    pub tombstone_tables: &'a (dyn Fn(i32) -> bool + Sync),
    /// Careful mode: one statement per event, in event order. Used to retry a batch whose grouped
    /// form hit a constraint that only the original order satisfies (a swapped unique value).
    pub careful: bool,
}

/// At most this many bytes of row text go into one statement's parameter: PostgreSQL refuses a
/// message over 1 GB, and memory on both sides stays bounded. A single row larger than this
/// still goes alone.
pub const STATEMENT_BYTES: usize = 64 << 20;

/// Splits `data` into consecutive runs of at most [`STATEMENT_BYTES`] (one row at least).
fn by_bytes<'a>(data: &'a [&'a str]) -> impl Iterator<Item = &'a [&'a str]> + 'a {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || bytes + rest[n].len() <= STATEMENT_BYTES) {
            bytes += rest[n].len();
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

async fn run(
    conn: &mut PgConnection,
    ctx: &ChunkContext<'_>,
    plan: &TablePlan,
    op: Op,
    data: &[&str],
) -> EngineResult<()> {
    match op {
        Op::Upsert => {
            for part in by_bytes(data) {
                for sql in &plan.upsert {
                    sqlx::query(sql)
                        .bind(part)
                        .execute(&mut *conn)
                        .await
                        .context(|| {
                            format!("applying {} upsert(s) to {}", part.len(), plan.display)
                        })?;
                }
            }
        }
        Op::Delete | Op::KeyChange => {
            let sql = if op == Op::Delete {
                &plan.delete
            } else {
                &plan.delete_unchanged
            };
            for part in by_bytes(data) {
                sqlx::query(sql)
                    .bind(part)
                    .execute(&mut *conn)
                    .await
                    .context(|| format!("applying {} delete(s) to {}", part.len(), plan.display))?;
                if (ctx.tombstone_tables)(plan.no) {
                    sqlx::query(&plan.tombstone)
                        .bind(part)
                        .execute(&mut *conn)
                        .await
                        .context(|| format!("remembering deleted keys of {}", plan.display))?;
                }
            }
        }
        Op::Truncate => {
            for relation in data {
                super::truncate::replay(conn, plan, relation, false).await?;
            }
            if (ctx.tombstone_tables)(plan.no) {
                sqlx::query(&plan.reset_copy)
                    .bind(plan.no)
                    .execute(&mut *conn)
                    .await
                    .context(|| format!("restarting the copy of {}", plan.display))?;
            }
        }
        // A partition pgshift's source watch has just seen: empty its range here, then the
        // events that follow bring its rows (a truncate that beat the watch leaves none). While
        // the table is still being copied, the keys emptied are remembered as deleted, so that
        // no chunk read before the truncate brings them back; the copy goes on (pg_partman adds
        // a partition a day).
        Op::Appeared => {
            for relation in data {
                if (ctx.tombstone_tables)(plan.no) {
                    remember_range(conn, plan, relation).await?;
                }
                super::truncate::replay(conn, plan, relation, true).await?;
            }
        }
        Op::Piece => {
            wide::prepare(conn).await?;
            for piece in data {
                wide::stage(conn, plan, piece).await?;
            }
        }
        Op::Assemble => {
            wide::prepare(conn).await?;
            for tag in data {
                wide::write(conn, plan, tag).await?;
            }
        }
        // Handled by the worker before the chunk reaches here (ddl.rs); never a table's.
        Op::SchemaChange => {
            return Err(EngineError::invalid(
                "corrupt_event",
                format!("a schema change was given as an event of {}", plan.display),
            ));
        }
        Op::Unsendable => {
            // While the table copies (after a resync, say) the copy reads the row as it is now:
            // the target forgets what it holds under that key and the copy starts again, so the
            // row comes back from the source (or fails there, loudly, if it still cannot travel).
            // Otherwise nothing can make the target right: stop on this table.
            for unsendable in data {
                let (key_row, words) = unsendable.split_once('\n').unwrap_or(("", unsendable));
                if !(ctx.tombstone_tables)(plan.no) {
                    return Err(EngineError::invalid(
                        "row_cannot_travel",
                        format!(
                            "{words}; pgshift cannot carry this row to the target: change the value on the source, then resync the table"
                        ),
                    ));
                }
                sqlx::query(&plan.delete)
                    .bind([key_row])
                    .execute(&mut *conn)
                    .await
                    .context(|| {
                        format!(
                            "forgetting a row of {} that the copy brings again",
                            plan.display
                        )
                    })?;
                sqlx::query(&plan.reset_copy)
                    .bind(plan.no)
                    .execute(&mut *conn)
                    .await
                    .context(|| format!("restarting the copy of {}", plan.display))?;
            }
        }
    }
    Ok(())
}

/// Applies one chunk of events inside the caller's target transaction.
pub async fn apply_chunk(
    conn: &mut PgConnection,
    ctx: &ChunkContext<'_>,
    events: &[Event],
) -> EngineResult<()> {
    // Split by table, keeping each table's own order.
    let mut order: Vec<i32> = Vec::new();
    let mut per_table: HashMap<i32, Vec<&Event>> = HashMap::new();
    for e in events {
        per_table
            .entry(e.table_no)
            .or_insert_with(|| {
                order.push(e.table_no);
                Vec::new()
            })
            .push(e);
    }
    for table_no in order {
        let Some(plan) = ctx.plans.get(&table_no) else {
            // Events of a table this migration no longer replicates.
            continue;
        };
        let table_events = &per_table[&table_no];
        if plan.is_keyless() {
            apply_keyless(conn, ctx, plan, table_events)
                .await
                .map_err(|e| e.on_table(table_no))?;
            continue;
        }
        let mut i = 0;
        while i < table_events.len() {
            let op = table_events[i].op;
            let mut j = i + 1;
            if !ctx.careful {
                while j < table_events.len() && table_events[j].op == op {
                    j += 1;
                }
            }
            let data: Vec<&str> = table_events[i..j].iter().map(|e| e.data.as_str()).collect();
            run(conn, ctx, plan, op, &data)
                .await
                .map_err(|e| e.on_table(table_no))?;
            i = j;
        }
    }
    Ok(())
}

/// Applies one chunk's events of a table without a key: held while its copy has not landed,
/// otherwise staged for the end of the batch (truncates apply what is staged first).
async fn apply_keyless(
    conn: &mut PgConnection,
    ctx: &ChunkContext<'_>,
    plan: &TablePlan,
    events: &[&Event],
) -> EngineResult<()> {
    if (ctx.tombstone_tables)(plan.no) && keyless::still_copying(conn, plan).await? {
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let mut from = 0;
        for part in by_bytes(&data) {
            keyless::hold(conn, plan, &events[from..from + part.len()]).await?;
            from += part.len();
        }
        return Ok(());
    }
    let mut i = 0;
    while i < events.len() {
        let op = events[i].op;
        let mut j = i + 1;
        while j < events.len() && events[j].op == op {
            j += 1;
        }
        let data: Vec<&str> = events[i..j].iter().map(|e| e.data.as_str()).collect();
        match op {
            Op::Upsert | Op::Delete => {
                for part in by_bytes(&data) {
                    keyless::stage(conn, plan, op, part).await?;
                }
            }
            Op::Truncate | Op::Appeared => {
                keyless::flush(conn, plan).await?;
                for relation in &data {
                    super::truncate::replay(conn, plan, relation, op == Op::Appeared).await?;
                }
            }
            Op::Unsendable => {
                let words = data[0].split_once('\n').map_or(data[0], |(_, w)| w);
                return Err(EngineError::invalid(
                    "row_cannot_travel",
                    format!("{words}; pgshift cannot carry this row to the target: change the value on the source, then resync the table"),
                ));
            }
            Op::KeyChange | Op::Piece | Op::Assemble | Op::SchemaChange => {
                return Err(EngineError::invalid(
                    "corrupt_event",
                    format!(
                        "an event of {} carries a key operation, but the table has no key",
                        plan.display
                    ),
                ));
            }
        }
        i = j;
    }
    Ok(())
}

/// Ends a batch inside the caller's target transaction: applies what tables without a key
/// staged (see [`keyless`]). Called once per batch, before its tick is recorded.
pub async fn finish_batch(conn: &mut PgConnection, ctx: &ChunkContext<'_>) -> EngineResult<()> {
    // Most migrations have no table without a key: no round trip for them on every batch.
    if !ctx.plans.values().any(TablePlan::is_keyless) {
        return Ok(());
    }
    for table_no in keyless::staged_tables(conn).await? {
        let Some(plan) = ctx.plans.get(&table_no) else {
            continue;
        };
        keyless::flush(conn, plan)
            .await
            .map_err(|e| e.on_table(table_no))?;
    }
    Ok(())
}
