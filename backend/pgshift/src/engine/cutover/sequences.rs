//! Engine layer (cutover): sequences do not move with rows: at cutover every sequence the migrated
//! tables use (owned by a column, identity, or named in a column default) and every sequence in the
//! migrated schemas is set on the target to at least the source's value. Before that, the drift is
//! shown.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::TableSpec;

/// One sequence on both sides. Values are `last_value` once the sequence was used (`None`
/// before its first `nextval`, or when the sequence is missing on that side).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SequenceDrift {
    /// `schema.name`, unquoted.
    pub name: String,
    pub source: Option<i64>,
    pub target: Option<i64>,
    /// The target would hand out a value the source already used.
    pub behind: bool,
    #[serde(skip)]
    #[schema(ignore)]
    quoted: String,
}

/// The sequences to move, quoted (`"schema"."name"`) with their display names, read on the source.
async fn sequence_names(
    src: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<(String, String)>> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let rows = sqlx::query(
        "WITH migrated AS (SELECT unnest($1::text[])::regclass AS rel)
         SELECT format('%I.%I', n.nspname, s.relname), n.nspname || '.' || s.relname
           FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
          WHERE s.relkind = 'S' AND n.nspname NOT LIKE 'pgshift\\_%'
            AND (n.nspname = ANY($2::text[])
                 OR EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                               AND d.refobjid IN (SELECT rel FROM migrated))
                 OR EXISTS (SELECT 1 FROM pg_attrdef ad
                              JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                             WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = s.oid
                               AND ad.adrelid IN (SELECT rel FROM migrated)))
          ORDER BY 2",
    )
    .bind(&names)
    .bind(&schemas)
    .fetch_all(&mut *src)
    .await
    .context(|| "listing the sequences of the migrated tables".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `last_value` if the sequence was used, and whether it counts up. `Ok(None)` when missing.
async fn read(
    conn: &mut PgConnection,
    quoted: &str,
    side: &str,
) -> EngineResult<Option<(Option<i64>, bool)>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(quoted)
        .fetch_one(&mut *conn)
        .await
        .context(|| format!("looking for sequence {quoted} on the {side}"))?;
    if !exists {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "SELECT last_value, is_called, (SELECT seqincrement > 0 FROM pg_sequence WHERE seqrelid = $1::regclass) FROM {quoted}"
    ))
    .bind(quoted)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            EngineError::MissingPrivilege(format!(
                "the {side} role may not read sequence {quoted}: GRANT SELECT ON SEQUENCE {quoted} TO it"
            ))
        }
        _ => EngineError::Database {
            context: format!("reading sequence {quoted} on the {side}"),
            source: e,
        },
    })?;
    let called: bool = row.get(1);
    Ok(Some((called.then(|| row.get(0)), row.get(2))))
}

/// Each sequence's value on both sides.
pub async fn drift(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<SequenceDrift>> {
    let mut out = Vec::new();
    for (quoted, name) in sequence_names(src, tables).await? {
        let Some((source, ascending)) = read(src, &quoted, "source").await? else {
            continue;
        };
        let target = read(dst, &quoted, "target").await?;
        let missing = target.is_none();
        let target = target.and_then(|(v, _)| v);
        let behind = missing
            || match (source, target) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(s), Some(t)) => {
                    if ascending {
                        t < s
                    } else {
                        t > s
                    }
                }
            };
        out.push(SequenceDrift {
            name,
            source,
            target,
            behind,
            quoted,
        });
    }
    Ok(out)
}

/// Sets every sequence that is behind on the target to the source's value; returns what moved.
/// A sequence missing on the target is an error naming it.
pub async fn move_forward(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<SequenceDrift>> {
    let all = drift(src, dst, tables).await?;
    let mut moved = Vec::new();
    for s in all {
        if !s.behind {
            continue;
        }
        let Some(value) = s.source else { continue };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&s.quoted)
            .fetch_one(&mut *dst)
            .await
            .context(|| format!("looking for sequence {} on the target", s.name))?;
        if !exists {
            return Err(EngineError::invalid(
                "sequence_missing",
                format!(
                    "sequence {} exists on the source but not on the target; create it there",
                    s.name
                ),
            ));
        }
        sqlx::query("SELECT setval($1::regclass, $2, true)")
            .bind(&s.quoted)
            .bind(value)
            .execute(&mut *dst)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                    EngineError::MissingPrivilege(format!(
                        "the target role may not set sequence {}: GRANT UPDATE ON SEQUENCE {} TO it",
                        s.name, s.quoted
                    ))
                }
                _ => EngineError::Database {
                    context: format!("setting sequence {} on the target", s.name),
                    source: e,
                },
            })?;
        moved.push(SequenceDrift {
            target: Some(value),
            behind: false,
            ..s
        });
    }
    Ok(moved)
}
