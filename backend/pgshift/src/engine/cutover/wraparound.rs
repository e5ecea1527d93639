//! Engine layer (cutover): the `wraparound` preflight gate: a migrated table due for an
//! anti-wraparound autovacuum would hold the freeze up, because PostgreSQL never cancels such a
//! vacuum for a lock request (an ordinary autovacuum gives way after `deadlock_timeout`).

use sqlx::PgConnection;

use super::gates::Gate;
use crate::engine::error::Context;
use crate::engine::EngineResult;
use crate::store::TableSpec;

/// One migrated table (or partition) against the ages that make autovacuum vacuum it to
/// prevent wraparound: the server's setting, or the table's own when lower (autovacuum ignores
/// a higher one).
#[derive(sqlx::FromRow)]
struct FreezeAge {
    name: String,
    xid_age: i32,
    xid_limit: i64,
    mxid_age: i32,
    mxid_limit: i64,
}

impl FreezeAge {
    /// What makes the table due, in words; `None` while it is not.
    fn due(&self) -> Option<String> {
        let mut over = Vec::new();
        if i64::from(self.xid_age) > self.xid_limit {
            over.push(format!(
                "transaction ID age {} over autovacuum_freeze_max_age {}",
                self.xid_age, self.xid_limit
            ));
        }
        if i64::from(self.mxid_age) > self.mxid_limit {
            over.push(format!(
                "multixact age {} over autovacuum_multixact_freeze_max_age {}",
                self.mxid_age, self.mxid_limit
            ));
        }
        (!over.is_empty()).then(|| format!("{} ({})", self.name, over.join(", ")))
    }

    /// How far the table is towards either limit (1.0: at it).
    fn share(&self) -> f64 {
        let xid = f64::from(self.xid_age) / self.xid_limit.max(1) as f64;
        let mxid = f64::from(self.mxid_age) / self.mxid_limit.max(1) as f64;
        xid.max(mxid)
    }
}

/// Tables due for an anti-wraparound autovacuum. Unlike an ordinary one, PostgreSQL never
/// cancels it for a lock request: the freeze would wait behind it (with every writer of the
/// table queued behind the freeze) until its lock timeout, and the cutover would stop. Reads
/// the catalog only; a table is due once its age passes the effective limit, whether or not
/// the vacuum has begun.
pub(super) async fn gate(src: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<Gate> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    // Only relations with storage have a relfrozenxid (a partitioned parent's is 0, whose age
    // reads as 2^31 - 1). A reloption above the server's setting is ignored by autovacuum.
    let ages: Vec<FreezeAge> = sqlx::query_as(
        "WITH migrated AS (SELECT unnest($1::text[])::regclass AS rel),
              rels AS (SELECT rel AS relid FROM migrated
                       UNION SELECT p.relid FROM migrated m, pg_partition_tree(m.rel) p)
         SELECT format('%I.%I', n.nspname, c.relname) AS name,
                pg_catalog.age(c.relfrozenxid) AS xid_age,
                least(current_setting('autovacuum_freeze_max_age')::bigint,
                      (SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                        WHERE o.option_name = 'autovacuum_freeze_max_age')) AS xid_limit,
                pg_catalog.mxid_age(c.relminmxid) AS mxid_age,
                least(current_setting('autovacuum_multixact_freeze_max_age')::bigint,
                      (SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                        WHERE o.option_name = 'autovacuum_multixact_freeze_max_age')) AS mxid_limit
           FROM rels r JOIN pg_class c ON c.oid = r.relid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r'
          ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(&mut *src)
    .await
    .context(|| "reading the migrated tables' transaction ID ages on the source".into())?;
    let due: Vec<String> = ages.iter().filter_map(FreezeAge::due).collect();
    if !due.is_empty() {
        let names: Vec<&str> = ages
            .iter()
            .filter(|a| a.due().is_some())
            .map(|a| a.name.as_str())
            .collect();
        return Ok(Gate::new(
            "wraparound",
            false,
            format!(
                "due for an anti-wraparound autovacuum, which no lock request cancels, so the freeze would wait behind it and fail: {}; run VACUUM (FREEZE) on {} first, or wait for autovacuum to finish",
                due.join("; "),
                names.join(", ")
            ),
        ));
    }
    Ok(Gate::new(
        "wraparound",
        true,
        match ages.iter().max_by(|a, b| a.share().total_cmp(&b.share())) {
            Some(a) => format!(
                "no migrated table is due for an anti-wraparound autovacuum (the closest, {}, is at {:.0} % of its limit)",
                a.name,
                a.share() * 100.0
            ),
            None => "no migrated table has storage of its own".into(),
        },
    ))
}
