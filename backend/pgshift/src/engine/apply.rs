//! Applying events to the target. Speed comes from grouping: within a chunk, each table's
//! consecutive upserts become one `INSERT ... ON CONFLICT` and its consecutive deletes one
//! `DELETE ... USING`. Tables are independent of each other because the apply session runs with
//! `session_replication_role = replica` (no trigger or foreign-key action fires), and every
//! batch commits the source's state at a tick, so foreign keys hold after each commit.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::batch::{Event, Op};
use super::error::Context;
use super::{quote_ident, EngineResult};
use crate::store::TableSpec;

/// Prepared SQL for one table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub no: i32,
    pub display: String,
    upsert: String,
    delete: String,
    truncate: String,
    tombstone: String,
    reset_copy: String,
}

impl TablePlan {
    pub fn new(schema: &str, table: &TableSpec, referenced_by_others: bool) -> Self {
        let t = table.sql_name();
        let q = |c: &str| quote_ident(c);
        let cols: Vec<String> = table.writable_columns().map(|c| q(&c.name)).collect();
        let keys: Vec<String> = table.key.iter().map(|k| q(k)).collect();
        let overriding = if table.columns.iter().any(|c| c.identity_always) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        // Identity-always columns cannot be updated (the source cannot change them either).
        let set: Vec<String> = table
            .writable_columns()
            .filter(|c| !table.key.contains(&c.name) && !c.identity_always)
            .map(|c| format!("{0} = EXCLUDED.{0}", q(&c.name)))
            .collect();
        let on_conflict = if set.is_empty() {
            format!("ON CONFLICT ({}) DO NOTHING", keys.join(", "))
        } else {
            format!(
                "ON CONFLICT ({}) DO UPDATE SET {}",
                keys.join(", "),
                set.join(", ")
            )
        };
        let r_keys: Vec<String> = keys.iter().map(|k| format!("r.{k}")).collect();
        // The last version of each key wins; DISTINCT ON compares with the column types'
        // own equality (1.0 = 1.00), as the primary key does.
        let upsert = format!(
            "INSERT INTO {t} AS t ({cols}){overriding}
             SELECT {cols} FROM (
                 SELECT DISTINCT ON ({r_keys}) r.*
                   FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(j, n)
                  CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, e.j) AS r
                  ORDER BY {r_keys}, e.n DESC) AS s
             {on_conflict}",
            cols = cols.join(", "),
            r_keys = r_keys.join(", "),
        );
        let key_match: Vec<String> = keys.iter().map(|k| format!("t.{k} = d.{k}")).collect();
        let delete = format!(
            "DELETE FROM {t} AS t USING jsonb_populate_recordset(NULL::{t}, $1::jsonb) AS d WHERE {}",
            key_match.join(" AND ")
        );
        // TRUNCATE is refused when another table's foreign key points here; with
        // session_replication_role = replica a DELETE has the same effect without cascading.
        let truncate = if referenced_by_others {
            format!("DELETE FROM {t}")
        } else if table.partitioned {
            format!("TRUNCATE {t}")
        } else {
            format!("TRUNCATE ONLY {t}")
        };
        let tombstone = format!(
            "INSERT INTO {}.tombstone (table_no, key) SELECT $2, k FROM jsonb_array_elements($1::jsonb) AS k
             ON CONFLICT DO NOTHING",
            quote_ident(schema)
        );
        // A truncate while the table is still being copied: the copy's older snapshots would bring
        // rows back, so the copy starts again (a new epoch makes the running copy discard its chunk).
        let reset_copy = format!(
            "WITH reset AS (
                 UPDATE {s}.table_state
                    SET state = 'pending', copy_epoch = copy_epoch + 1, copy_position = NULL, rows_copied = 0
                  WHERE table_no = $1 AND state IN ('pending', 'copying'))
             DELETE FROM {s}.tombstone WHERE table_no = $1",
            s = quote_ident(schema)
        );
        Self {
            no: table.no,
            display: table.display_name(),
            upsert,
            delete,
            truncate,
            tombstone,
            reset_copy,
        }
    }
}

/// How to apply one chunk.
pub struct ChunkContext<'a> {
    pub plans: &'a HashMap<i32, TablePlan>,
    /// Tables whose deletes must leave tombstones (their copy is not finished).
    pub tombstone_tables: &'a (dyn Fn(i32) -> bool + Sync),
    /// Careful mode: one statement per event, in event order. Used to retry a batch whose grouped
    /// form hit a constraint that only the original order satisfies (a swapped unique value).
    pub careful: bool,
}

/// What one chunk did.
pub struct Applied {
    pub events: usize,
}

fn json_array(items: &[&str]) -> String {
    let mut s = String::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    s.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s
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
            sqlx::query(&plan.upsert)
                .bind(json_array(data))
                .execute(&mut *conn)
                .await
                .context(|| format!("applying {} upsert(s) to {}", data.len(), plan.display))?;
        }
        Op::Delete => {
            let keys = json_array(data);
            sqlx::query(&plan.delete)
                .bind(&keys)
                .execute(&mut *conn)
                .await
                .context(|| format!("applying {} delete(s) to {}", data.len(), plan.display))?;
            if (ctx.tombstone_tables)(plan.no) {
                sqlx::query(&plan.tombstone)
                    .bind(&keys)
                    .bind(plan.no)
                    .execute(&mut *conn)
                    .await
                    .context(|| format!("remembering deleted keys of {}", plan.display))?;
            }
        }
        Op::Truncate => {
            sqlx::query(&plan.truncate)
                .execute(&mut *conn)
                .await
                .context(|| format!("applying a truncate to {}", plan.display))?;
            if (ctx.tombstone_tables)(plan.no) {
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
) -> EngineResult<Applied> {
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
        let mut i = 0;
        while i < table_events.len() {
            let op = table_events[i].op;
            let mut j = i + 1;
            if !ctx.careful && op != Op::Truncate {
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
    Ok(Applied {
        events: events.len(),
    })
}
