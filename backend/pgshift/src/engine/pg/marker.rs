//! Engine layer, connections: the mark that tells pgshift's own sessions from the application's.
//!
//! pgshift's sessions write where capture and the cutover's freeze are installed (the apply on a
//! target that carries a reverse migration's capture, the reverse apply into a frozen source),
//! and capture and freeze must let them through. A setting anybody can `SET` would let any
//! session skip both, so the mark is a secret: a random token kept in a `marker` table in each
//! of pgshift's schemas, which only pgshift's role can read, and which pgshift's sessions copy
//! into the `pgshift.replicating` setting right after connecting (never in a statement's text:
//! the server reads it into the setting itself). Capture, `SECURITY DEFINER`, compares the
//! setting with its schema's token; the freeze, which runs as the writer, compares it with the
//! token's SHA-256, kept as the schema's comment (public, and of no use without the token). Both
//! look only when the setting is not empty, so the application's writes pay nothing.
//!
//! All of pgshift's schemas in one database share one token where they can read each other's:
//! a session that connected before a schema was installed (the forward apply, when the cutover
//! arms the reverse migration's capture on the target) already carries it.

use rand::RngCore;
use sqlx::PgConnection;

use crate::engine::error::Context;
use crate::engine::{quote_ident, quote_literal, EngineResult};

/// The setting pgshift's sessions carry: the tokens of the pgshift schemas of this database
/// that the session's role can read, separated by spaces.
pub const SETTING: &str = "pgshift.replicating";

/// What a schema's comment says before the SHA-256 (hex) of its token.
pub const FINGERPRINT_PREFIX: &str = "pgshift session marker sha256:";

/// Copies every readable pgshift token of the connected database into [`SETTING`], for the
/// session. Safe to run again (after a schema is installed); read-only.
const MARK_SESSION: &str = r#"
DO $mark$
DECLARE
    s text;
    t text;
    tokens text := '';
BEGIN
    FOR s IN
        SELECT n.nspname FROM pg_catalog.pg_namespace n
         WHERE n.nspname LIKE 'pgshift\_%'
           AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
         ORDER BY n.nspname
    LOOP
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('%I.marker', s)) IS NULL;
        CONTINUE WHEN NOT pg_catalog.has_table_privilege(pg_catalog.format('%I.marker', s), 'SELECT');
        FOR t IN EXECUTE pg_catalog.format('SELECT token FROM %I.marker', s) LOOP
            IF pg_catalog.strpos(' ' || tokens || ' ', ' ' || t || ' ') = 0 THEN
                tokens := pg_catalog.ltrim(tokens || ' ' || t);
            END IF;
        END LOOP;
    END LOOP;
    PERFORM pg_catalog.set_config('pgshift.replicating', tokens, false);
END
$mark$"#;

/// Marks the session as pgshift's, with the tokens it can read now.
pub async fn mark_session(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    super::run_script(conn, MARK_SESSION).await
}

/// Gives `schema` (pgshift's, already created) its marker if it has none: the token another
/// pgshift schema of this database already uses, if this role can read one, else a new random
/// one; and the token's fingerprint as the schema's comment. Then marks this session.
pub async fn ensure(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    let s = quote_ident(schema);
    let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{s}.marker"))
        .fetch_one(&mut *conn)
        .await
        .context(|| "looking for pgshift's session marker".into())?;
    if !present {
        mark_session(conn)
            .await
            .context(|| "reading pgshift's session markers".into())?;
        let shared: String =
            sqlx::query_scalar("SELECT split_part(current_setting('pgshift.replicating'), ' ', 1)")
                .fetch_one(&mut *conn)
                .await
                .context(|| "reading pgshift's session marker".into())?;
        let token = if shared.is_empty() {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            shared
        };
        super::run_script(
            conn,
            &format!(
                "CREATE TABLE {s}.marker (token text NOT NULL);
                 REVOKE ALL ON {s}.marker FROM PUBLIC;"
            ),
        )
        .await
        .context(|| "creating pgshift's session marker".into())?;
        // Bound, not written into the statement: the token never shows in a statement's text.
        sqlx::query(&format!("INSERT INTO {s}.marker (token) VALUES ($1)"))
            .bind(&token)
            .execute(&mut *conn)
            .await
            .context(|| "storing pgshift's session marker".into())?;
        let fingerprint: String =
            sqlx::query_scalar("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')")
                .bind(&token)
                .fetch_one(&mut *conn)
                .await
                .context(|| "fingerprinting pgshift's session marker".into())?;
        sqlx::query(&format!(
            "COMMENT ON SCHEMA {s} IS {}",
            quote_literal(&format!("{FINGERPRINT_PREFIX}{fingerprint}"))
        ))
        .execute(&mut *conn)
        .await
        .context(|| "recording the session marker's fingerprint".into())?;
    }
    mark_session(conn)
        .await
        .context(|| "marking the session as pgshift's".into())
}
