//! The replication tools that `bench-compare` runs the same scenarios through. Each knows how
//! to start replicating one database from the source to the target (initial copy included),
//! when its initial copy is done, which processes do its work, how to cut over, and how to
//! stop. The scenarios themselves (in `compare/scenarios`) are the same for every tool.

pub mod londiste;
pub mod native;
pub mod pgshift;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;

use crate::common::{Ctx, R};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolKind {
    Pgshift,
    Londiste,
    Native,
}

impl ToolKind {
    pub const ALL: [ToolKind; 3] = [ToolKind::Pgshift, ToolKind::Londiste, ToolKind::Native];

    /// The name `--tools` takes.
    pub fn name(self) -> &'static str {
        match self {
            ToolKind::Pgshift => "pgshift",
            ToolKind::Londiste => "londiste",
            ToolKind::Native => "native",
        }
    }

    /// The name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            ToolKind::Pgshift => "pgshift",
            ToolKind::Londiste => "Londiste3",
            ToolKind::Native => "native logical replication",
        }
    }
}

/// One database replicated from the source to the target: same name on both sides.
pub struct Pair {
    pub db: String,
    pub source_port: u16,
    pub target_port: u16,
    pub src: PgPool,
    pub dst: PgPool,
    /// A directory for the tool's files (configuration, logs, pid files, data).
    pub work: PathBuf,
    /// How long loading the target's schema took (`pg_dump --schema-only | psql`), not part
    /// of any tool's time; `None` when the target database was left empty.
    pub schema_loaded: Option<Duration>,
}

impl Pair {
    /// A libpq key/value connection string (Londiste, pgqd and CREATE SUBSCRIPTION take these).
    pub fn conninfo(port: u16, db: &str) -> String {
        format!("host=127.0.0.1 port={port} user=postgres dbname={db}")
    }

    pub fn source_conninfo(&self) -> String {
        Self::conninfo(self.source_port, &self.db)
    }

    pub fn target_conninfo(&self) -> String {
        Self::conninfo(self.target_port, &self.db)
    }
}

/// A tool replicating one [`Pair`].
pub enum Tool {
    Pgshift(pgshift::Pgshift),
    Londiste(londiste::Londiste),
    Native(native::Native),
}

/// What a tool's cutover took, step by step, from the moment writes were blocked on the source.
pub struct Cutover {
    /// (step, time it took), in order.
    pub steps: Vec<(String, Duration)>,
    /// How the tool's documentation says to do it, for the report.
    pub procedure: String,
    /// Set when the tool blocks writes itself and measures the window (pgshift); otherwise the
    /// scenario's own lock-to-done time is the figure.
    pub writes_blocked: Option<Duration>,
}

impl Tool {
    /// Installs what the tool needs and starts replicating `pair`, initial copy included.
    /// Returns once replication runs; [`Tool::copy_done`] says when the copy has finished.
    pub async fn start(kind: ToolKind, pair: &Pair) -> R<Tool> {
        Ok(match kind {
            ToolKind::Pgshift => Tool::Pgshift(pgshift::Pgshift::start(pair).await?),
            ToolKind::Londiste => Tool::Londiste(londiste::Londiste::start(pair).await?),
            ToolKind::Native => Tool::Native(native::Native::start(pair).await?),
        })
    }

    /// The tool's own word that every table is copied and replication follows the source.
    pub async fn copy_done(&self, pair: &Pair) -> R<bool> {
        match self {
            Tool::Pgshift(t) => t.copy_done().await,
            Tool::Londiste(t) => t.copy_done(pair).await,
            Tool::Native(t) => t.copy_done(pair).await,
        }
    }

    /// Pids of the processes doing the replication (their descendants count too).
    pub async fn processes(&self, pair: &Pair) -> R<Vec<u32>> {
        match self {
            Tool::Pgshift(t) => Ok(t.processes()),
            Tool::Londiste(t) => Ok(t.processes()),
            Tool::Native(t) => t.processes(pair).await,
        }
    }

    /// The tool's cutover, once writes are blocked on the source: the target gets the last
    /// changes and replication stops, so the application can move. `None` when the tool has
    /// no cutover in this benchmark yet.
    pub async fn cutover(&mut self, pair: &Pair) -> R<Option<Cutover>> {
        match self {
            Tool::Pgshift(t) => t.cutover(pair).await,
            Tool::Londiste(t) => t.cutover(pair).await.map(Some),
            Tool::Native(t) => t.cutover(pair).await.map(Some),
        }
    }

    /// Whether the tool's cutover blocks source writes itself (the scenario must not lock first).
    pub fn freezes_itself(&self) -> bool {
        matches!(self, Tool::Pgshift(_))
    }

    /// Stops replicating and removes what the tool installed (as far as the tool can).
    pub async fn stop(self, pair: &Pair) -> R<()> {
        match self {
            Tool::Pgshift(t) => t.stop().await,
            Tool::Londiste(t) => t.stop().await,
            Tool::Native(t) => t.stop(pair).await,
        }
    }

    /// Where the tool logged, to attach to an error.
    pub fn log_hint(&self) -> String {
        match self {
            Tool::Pgshift(t) => t.log_hint(),
            Tool::Londiste(t) => t.log_hint(),
            Tool::Native(_) => "the servers' logs".into(),
        }
    }
}

/// The source's sequences (`schema.name`, last value) copied to the target with `setval`:
/// none of the three tools replicates sequences as part of the table stream, so every
/// cutover procedure has this step.
pub async fn copy_sequences(pair: &Pair) -> R<usize> {
    let seqs: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
            AND schemaname NOT LIKE 'pgq%' AND schemaname NOT LIKE 'londiste%' AND schemaname NOT LIKE 'pgshift%'",
    )
    .fetch_all(&pair.src)
    .await
    .ctx(|| "reading the source's sequences".into())?;
    let mut n = 0;
    for (schema, name, last) in seqs {
        let Some(last) = last else { continue };
        sqlx::query("SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3)")
            .bind(&schema)
            .bind(&name)
            .bind(last)
            .execute(&pair.dst)
            .await
            .ctx(|| format!("setval of {schema}.{name} on the target"))?;
        n += 1;
    }
    Ok(n)
}

/// Runs a program to the end; its stdout, or an error with its output.
pub async fn run(program: &str, args: &[&str], dir: &std::path::Path) -> R<String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).current_dir(dir);
    crate::common::run(cmd).await
}
