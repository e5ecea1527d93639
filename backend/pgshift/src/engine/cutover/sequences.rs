//! Engine layer (cutover): sequences do not move with rows: at cutover every sequence the migrated
//! tables use (owned by a column, identity, or named in a column default) and every sequence in the
//! migrated schemas is set on the target to at least the source's value. Before that, the drift is
//! shown.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::TableSpec;

/// One sequence on both sides. `source`/`target` are `last_value` once the sequence was used
/// (`None` before its first `nextval`, or when the sequence is missing on that side);
/// `source_next`/`target_next` are what the next `nextval` hands out, which is what counts:
/// a sequence reset with `setval(…, false)` has a next value but no last one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SequenceDrift {
    /// `schema.name`, unquoted.
    pub name: String,
    pub source: Option<i64>,
    pub target: Option<i64>,
    pub source_next: Option<i64>,
    pub target_next: Option<i64>,
    /// The sequence does not exist on the target (the cutover's gates refuse).
    pub missing_on_target: bool,
    /// The target would hand out a value the source already used or will hand out next.
    pub behind: bool,
    #[serde(skip)]
    #[schema(ignore)]
    quoted: String,
    /// The source's next value, exactly (past i64 when the sequence is exhausted).
    #[serde(skip)]
    #[schema(ignore)]
    next: i128,
}

/// One side's reading of a sequence.
struct Reading {
    last: Option<i64>,
    next: i128,
    ascending: bool,
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

/// The privileges among `privileges` the connected role lacks on the sequences of `tables` on
/// this side (those that exist here), as the grant that gives them to `user`: the cutover reads
/// them on the source and sets them on the target (and the way back the other way round).
pub async fn missing_privileges(
    conn: &mut PgConnection,
    tables: &[TableSpec],
    privileges: &[&str],
    user: &str,
) -> EngineResult<Vec<String>> {
    let quoted: Vec<String> = sequence_names(conn, tables)
        .await?
        .into_iter()
        .map(|(q, _)| q)
        .collect();
    let privileges: Vec<String> = privileges.iter().map(|p| p.to_string()).collect();
    let lacking: Vec<String> = sqlx::query_scalar(
        "SELECT s FROM unnest($1::text[]) WITH ORDINALITY AS q(s, i)
          WHERE EXISTS (SELECT 1 FROM unnest($2::text[]) p WHERE NOT has_sequence_privilege(s, p))
          ORDER BY i",
    )
    .bind(&quoted)
    .bind(&privileges)
    .fetch_all(&mut *conn)
    .await
    .context(|| "checking privileges on the sequences".into())?;
    if lacking.is_empty() {
        return Ok(Vec::new());
    }
    let (privileges, names) = (privileges.join(", "), lacking.join(", "));
    Ok(vec![format!(
        "{privileges} on sequences {names} (GRANT {privileges} ON SEQUENCE {names} TO {})",
        crate::engine::quote_ident(user)
    )])
}

/// The sequence's last and next values and its direction. `Ok(None)` when missing.
async fn read(conn: &mut PgConnection, quoted: &str, side: &str) -> EngineResult<Option<Reading>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(quoted)
        .fetch_one(&mut *conn)
        .await
        .context(|| format!("looking for sequence {quoted} on the {side}"))?;
    if !exists {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "SELECT q.last_value, q.is_called, s.seqincrement > 0,
                (CASE WHEN q.is_called THEN q.last_value::numeric + s.seqincrement
                      ELSE q.last_value END)::text
           FROM {quoted} q, pg_sequence s WHERE s.seqrelid = $1::regclass"
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
    let next: String = row.get(3);
    let next = next.parse::<i128>().map_err(|_| {
        EngineError::invalid(
            "sequence_unreadable",
            format!("sequence {quoted} on the {side} has an unreadable next value {next:?}"),
        )
    })?;
    Ok(Some(Reading {
        last: called.then(|| row.get(0)),
        next,
        ascending: row.get(2),
    }))
}

/// Each sequence's value on both sides.
pub async fn drift(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<SequenceDrift>> {
    let mut out = Vec::new();
    for (quoted, name) in sequence_names(src, tables).await? {
        let Some(source) = read(src, &quoted, "source").await? else {
            continue;
        };
        let target = read(dst, &quoted, "target").await?;
        let behind = match &target {
            None => true,
            Some(t) if source.ascending => t.next < source.next,
            Some(t) => t.next > source.next,
        };
        out.push(SequenceDrift {
            name,
            source: source.last,
            target: target.as_ref().and_then(|t| t.last),
            source_next: i64::try_from(source.next).ok(),
            target_next: target.as_ref().and_then(|t| i64::try_from(t.next).ok()),
            missing_on_target: target.is_none(),
            behind,
            quoted,
            next: source.next,
        });
    }
    Ok(out)
}

/// The sequences that exist on the source but not on the target, named for the gate.
pub fn missing(all: &[SequenceDrift]) -> Vec<&str> {
    all.iter()
        .filter(|s| s.missing_on_target)
        .map(|s| s.name.as_str())
        .collect()
}

/// Sets every sequence that is behind on the target so that its next value is the source's
/// next value, whatever either side's `is_called` says; a sequence ahead is never moved back.
/// Returns what moved. A sequence missing on the target is an error naming it.
pub async fn move_forward(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<SequenceDrift>> {
    let all = drift(src, dst, tables).await?;
    if let Some(name) = missing(&all).first() {
        return Err(EngineError::invalid(
            "sequence_missing",
            format!("sequence {name} exists on the source but not on the target; create it there"),
        ));
    }
    let mut moved = Vec::new();
    for s in all {
        if !s.behind {
            continue;
        }
        let Ok(next) = i64::try_from(s.next) else {
            return Err(EngineError::invalid(
                "sequence_exhausted",
                format!(
                    "sequence {} is exhausted on the source; the target's cannot be set past it",
                    s.name
                ),
            ));
        };
        // is_called = false: the target's next nextval returns exactly `next`.
        sqlx::query("SELECT setval($1::regclass, $2, false)")
            .bind(&s.quoted)
            .bind(next)
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
            target_next: Some(next),
            behind: false,
            ..s
        });
    }
    Ok(moved)
}
