//! Engine layer: replaying a TRUNCATE on the target: of the whole table, or of one partition,
//! whose rows are emptied here whatever the target's own partitioning.
//!
//! A partition's event carries its bound (see [`super::partition_bound`]). The target empties
//! the partition of the same name when it has one with the same bound (TRUNCATE, fast); else
//! it deletes the bound's rows from the whole table (one table, other bounds, other names).
//! A hash partition's bound names the source's own table oid and cannot be evaluated here: it
//! is replayed by name only, where the target has the same partition.

use sqlx::PgConnection;

use super::apply::TablePlan;
use super::error::Context;
use super::partition_bound::{is_plain, TruncatedRelation};
use super::{EngineError, EngineResult};

/// `text` with every `'<digits>'::oid` literal blanked.
fn without_oids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("'::oid") {
        let head = &rest[..at];
        match head.rfind('\'') {
            Some(open)
                if !head[open + 1..].is_empty()
                    && head[open + 1..].chars().all(|c| c.is_ascii_digit()) =>
            {
                out.push_str(&head[..open]);
                out.push_str("'?'::oid");
            }
            _ => {
                out.push_str(head);
                out.push_str("'::oid");
            }
        }
        rest = &rest[at + "'::oid".len()..];
    }
    out.push_str(rest);
    out
}

/// Replays the truncate in `data` (an event payload). `appeared`: the source watch's mark of
/// a partition it has just seen, which may be left alone when the target has no way to empty
/// that range (the partition's rows follow anyway; only a truncate that beat the watch would
/// stay unseen).
pub async fn replay(
    conn: &mut PgConnection,
    plan: &TablePlan,
    data: &str,
    appeared: bool,
) -> EngineResult<()> {
    let TruncatedRelation { relation, bound } = TruncatedRelation::parse(data);
    let found: Option<(bool, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT c.oid = $2::regclass, c.relkind = 'p',
                EXISTS (SELECT 1 FROM pg_partition_tree($2::regclass) p WHERE p.relid = c.oid),
                pg_get_partition_constraintdef(c.oid)
           FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(relation)
    .bind(&plan.table)
    .fetch_optional(&mut *conn)
    .await
    .context(|| format!("looking for {relation} on the target"))?;
    if let Some((true, _, _, _)) = found {
        if appeared {
            // The watch never marks the table itself; nothing to do.
            return Ok(());
        }
        sqlx::query(&plan.truncate)
            .execute(&mut *conn)
            .await
            .context(|| format!("applying a truncate to {}", plan.display))?;
        return Ok(());
    }
    let columns: Vec<&str> = plan.columns.iter().map(String::as_str).collect();
    let usable = bound.filter(|b| is_plain(b, &columns));
    let same_partition = match &found {
        Some((_, partitioned, true, target_bound)) => {
            // Same name and bound. A hash partition's bound names its parent's oid, which
            // differs between servers: compared without it (same modulus and remainder).
            let same_bound = match (bound, target_bound) {
                (Some(b), Some(t)) => b == t || without_oids(b) == without_oids(t),
                (None, _) => usable.is_none(),
                _ => false,
            };
            same_bound.then_some(*partitioned)
        }
        _ => None,
    };
    if let Some(partitioned) = same_partition {
        // The name came from the source's own format('%I.%I'); it names a relation here.
        let sql = match (plan.referenced_by_others, partitioned) {
            (true, _) => format!("DELETE FROM {relation}"),
            (false, true) => format!("TRUNCATE {relation}"),
            (false, false) => format!("TRUNCATE ONLY {relation}"),
        };
        sqlx::query(&sql)
            .execute(&mut *conn)
            .await
            .context(|| format!("applying a truncate to {relation}"))?;
        return Ok(());
    }
    if let Some(bound) = usable {
        // Checked by is_plain: only this table's columns, literals, casts and operators.
        sqlx::query(&format!("DELETE FROM {} WHERE {bound}", plan.table))
            .execute(&mut *conn)
            .await
            .context(|| {
                format!(
                    "emptying the rows of {relation} (truncated on the source) from {}",
                    plan.display
                )
            })?;
        return Ok(());
    }
    if appeared && plan.is_keyless() {
        // Without a key the rows that follow are added, not upserted: any the target already
        // holds would be there twice.
        return Err(EngineError::invalid(
            "partition_unplaceable",
            format!(
                "{relation} appeared on the source as a partition of {}, a table without a key, and the target cannot empty its range (no partition of that name with the same bound, and the bound cannot be evaluated here): its rows would be added twice. Give the target a partition of that name and bound, then resync the table",
                plan.display
            ),
        ));
    }
    if appeared {
        tracing::warn!(%relation, table = %plan.display, "a new partition's range cannot be emptied on the target (no partition of that name, and its bound cannot be evaluated here); its rows follow as upserts");
        return Ok(());
    }
    Err(EngineError::invalid(
        "partition_missing",
        format!(
            "{relation}, a partition of {}, was truncated on the source, and the target has no partition of that name with the same bound{}",
            plan.display,
            if bound.is_some() {
                " and cannot evaluate its bound (a hash partition, or a bound with an expression)"
            } else {
                ""
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::without_oids;

    #[test]
    fn hash_bounds_compare_without_the_parent_oid() {
        assert_eq!(
            without_oids("satisfies_hash_partition('16384'::oid, 4, 0, id)"),
            without_oids("satisfies_hash_partition('24601'::oid, 4, 0, id)")
        );
        assert_ne!(
            without_oids("satisfies_hash_partition('16384'::oid, 4, 0, id)"),
            without_oids("satisfies_hash_partition('24601'::oid, 8, 0, id)")
        );
        assert_eq!(without_oids("(a = 'x''::oid')"), "(a = 'x''::oid')");
    }
}
