//! Command-line layer (the API client): `pgshift migration
//! preview|create|list|show|start|pause|resume|remove|unfreeze|wait|tables|ddl|cutover|cutover-abort|verify`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::api::{Api, ClientError};
use super::clusters::segment;
use super::operations::{follow, Follow};
use super::{duration, print, print_json, table, text, wait, Connection};

/// A migration's source, target, tables and schema mode, as `create` and `preview` take them.
#[derive(clap::Args, Debug)]
pub struct Definition {
    /// The source database, as CLUSTER:DATABASE.
    #[arg(long, value_name = "CLUSTER:DATABASE")]
    source: String,
    /// The target database, as CLUSTER:DATABASE.
    #[arg(long, value_name = "CLUSTER:DATABASE")]
    target: String,
    /// Only tables matching this `schema.table` pattern (`*` matches anything); repeat for
    /// more [default: every table].
    #[arg(long = "table", value_name = "PATTERN")]
    tables: Vec<String>,
    /// `create`: pgshift builds the target's tables from the source's schema; `existing`:
    /// they are there and match the source's [default: create when none of the tables
    /// exists on the target].
    #[arg(long, value_name = "MODE", value_parser = ["create", "existing"])]
    schema: Option<String>,
}

impl Definition {
    /// The API's body for it.
    fn body(&self) -> Result<Value, ClientError> {
        let mut body = json!({
            "source": endpoint("--source", &self.source)?,
            "target": endpoint("--target", &self.target)?,
        });
        if !self.tables.is_empty() {
            body["tables"] = json!(self.tables);
        }
        if let Some(mode) = &self.schema {
            body["schema"] = json!(mode);
        }
        Ok(body)
    }
}

#[derive(Subcommand, Debug)]
pub enum MigrationCommand {
    /// What creating a migration would do, changing nothing: the tables the patterns select,
    /// each checked as `create` checks it, and what is not moved as rows of the tables (large
    /// objects, materialized views, unlogged and foreign tables) with what happens to each.
    Preview {
        #[command(flatten)]
        definition: Definition,
    },
    /// Check and store a migration (installs nothing until `start`).
    Create {
        name: String,
        #[command(flatten)]
        definition: Definition,
    },
    /// List migrations with their state and lag.
    List,
    /// One migration in detail, with per-table progress.
    Show { name: String },
    /// Install capture on the source and begin the copy.
    Start { name: String },
    /// Stop copying and applying; the source keeps capturing.
    Pause { name: String },
    /// Resume a paused migration.
    Resume { name: String },
    /// Stop the migration and drop what pgshift installed on both sides.
    Remove {
        name: String,
        /// Needed to remove a cut-over migration: its old server then takes writes again,
        /// which the new server never sees.
        #[arg(long)]
        unfreeze_source: bool,
    },
    /// Lift a freeze a stopped cutover (or a crash) left on the source; pgshift does it by
    /// itself as soon as it can, this tries now. Refused while an operation runs and for a
    /// cut-over migration (use `remove --unfreeze-source`).
    Unfreeze { name: String },
    /// Apply a schema change on both sides at the same point of the stream: the statements run
    /// on the source in one transaction with an event the target applies in order. Admins only;
    /// every table must be synced.
    Ddl {
        name: String,
        /// The file holding the statements (`-` reads them from standard input).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Wait until the migration is synced and/or its lag is low enough; exits 5 on timeout.
    Wait {
        name: String,
        /// Until every table is synced (state `synced`).
        #[arg(long)]
        synced: bool,
        /// Until the lag is below this (e.g. 2s, 500ms).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        lag_below: Option<Duration>,
        /// Give up after this long (e.g. 30m).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "30m")]
        timeout: Duration,
        /// How often to ask the server.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "1s")]
        interval: Duration,
    },
    /// Change which tables a migration replicates while it runs.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Cut over to the target: gates, every row compared range by range, freeze, drain,
    /// sequences, the rows written since compared again, switch. Follows the operation step by
    /// step; exits 0 only when it succeeded, 8 when it failed or was aborted.
    #[command(after_help = super::EXIT_CODES)]
    Cutover {
        name: String,
        /// Run the gates only.
        #[arg(long)]
        dry_run: bool,
        /// The lag gate's threshold.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "5s")]
        max_lag: Duration,
        /// Longest wait for the freeze's locks and for the drain; then the cutover aborts and
        /// source writes are restored [server default: 30s].
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        timeout: Option<Duration>,
        /// Longest time the source stays frozen; past it the source lets writes through by
        /// itself (even if pgshift is gone) and the cutover stops [server default: 120s].
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        freeze_limit: Option<Duration>,
        /// Compare row counts only, not content (content is compared by default).
        #[arg(long, conflicts_with = "checksums")]
        counts_only: bool,
        /// Compare content: checksums over every column each side has now (the default).
        #[arg(long)]
        checksums: bool,
        /// Arm replication from the new server back to the old one before writes resume.
        #[arg(long)]
        reverse: bool,
        /// Name of the reverse migration [default: NAME-reverse].
        #[arg(long, value_name = "NAME", requires = "reverse")]
        reverse_name: Option<String>,
        /// Receives each step as JSON (POST).
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Abort the migration's running cutover or verification; source writes are restored unless
    /// the switch already happened.
    CutoverAbort { name: String },
    /// Compare every table on both sides, key range by key range. Exits 0 when they match, 7 when
    /// any table differs, 8 when the verification failed or was aborted.
    #[command(after_help = super::EXIT_CODES)]
    Verify {
        name: String,
        /// Re-copy the key ranges that differ, then verify them again.
        #[arg(long)]
        repair: bool,
        /// Rows per compared key range [server default: 10000].
        #[arg(long, value_name = "ROWS")]
        range_rows: Option<i64>,
        #[command(flatten)]
        follow: FollowArgs,
    },
}

/// `pgshift migration tables …`.
#[derive(Subcommand, Debug)]
pub enum TablesCommand {
    /// Add the tables the patterns select (`schema.table`, `*` matches anything) that the
    /// migration does not have yet; they are copied and caught up while the others replicate.
    Add {
        name: String,
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
        /// Delete the rows an added table holds on the target (left from an earlier time in the
        /// migration, say) and copy it again; refused without this.
        #[arg(long)]
        empty_target: bool,
    },
    /// Stop replicating one table (`schema.table`): its capture is removed from the source; its
    /// rows on the target stay.
    Remove { name: String, table: String },
}

/// How `cutover` and `verify` follow their operation.
#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// Print the started operation and exit 0 without following it.
    #[arg(long)]
    no_wait: bool,
    /// How often to ask the server about the operation.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "500ms")]
    interval: Duration,
}

impl FollowArgs {
    fn with(&self, json: bool) -> Follow {
        Follow {
            no_wait: self.no_wait,
            interval: self.interval,
            json,
        }
    }
}

pub async fn run(
    connection: &Connection,
    command: MigrationCommand,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let api = Api::new(&connection.url, connection.token.clone())?;
    let json = connection.json;
    match command {
        MigrationCommand::Preview { definition } => {
            let preview = api.post("/migrations/preview", definition.body()?).await?;
            if json {
                return print_json(out, &preview);
            }
            print(out, &super::migration_show::preview(&preview))
        }
        MigrationCommand::Create { name, definition } => {
            let mut body = definition.body()?;
            body["name"] = json!(name);
            let migration = api.post("/migrations", body).await?;
            if json {
                return print_json(out, &migration);
            }
            let count = migration["tables"].as_array().map_or(0, Vec::len);
            print(
                out,
                &format!(
                    "migration {} created: {count} table{} from {} to {} (start it with: pgshift migration start {})\n{}",
                    text(&migration, "name"),
                    if count == 1 { "" } else { "s" },
                    side(&migration["source"]),
                    side(&migration["target"]),
                    text(&migration, "name"),
                    super::migration_show::special_objects(&migration["special_objects"]),
                ),
            )
        }
        MigrationCommand::List => {
            let migrations = api.get("/migrations").await?;
            if json {
                return print_json(out, &migrations);
            }
            let rows: Vec<Vec<String>> = migrations
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    vec![
                        text(m, "name"),
                        text(m, "state"),
                        lag(m),
                        text(m, "pending_events"),
                        tables_synced(m),
                        side(&m["source"]),
                        side(&m["target"]),
                    ]
                })
                .collect();
            print(
                out,
                &table::render(
                    &[
                        "NAME", "STATE", "LAG", "PENDING", "TABLES", "SOURCE", "TARGET",
                    ],
                    &rows,
                ),
            )
        }
        MigrationCommand::Show { name } => {
            let migration = api.get(&path(&name)).await?;
            if json {
                return print_json(out, &migration);
            }
            print(out, &super::migration_show::details(&migration))
        }
        MigrationCommand::Tables { command } => tables(&api, out, json, command).await,
        MigrationCommand::Start { name } => act(&api, out, json, &name, "start").await,
        MigrationCommand::Pause { name } => act(&api, out, json, &name, "pause").await,
        MigrationCommand::Resume { name } => act(&api, out, json, &name, "resume").await,
        MigrationCommand::Remove {
            name,
            unfreeze_source,
        } => {
            let query = if unfreeze_source {
                "?unfreeze_source=true"
            } else {
                ""
            };
            api.delete(&format!("{}{query}", path(&name))).await?;
            if json {
                return print_json(out, &json!({"removed": "migration", "name": name}));
            }
            print(out, &format!("migration {name} removed\n"))
        }
        MigrationCommand::Wait {
            name,
            synced,
            lag_below,
            timeout,
            interval,
        } => {
            let goal = wait::Goal::new(synced, lag_below)?;
            let started = std::time::Instant::now();
            let migration =
                wait::until(&api, &path(&name), &name, &goal, timeout, interval).await?;
            if json {
                return print_json(out, &migration);
            }
            print(
                out,
                &format!(
                    "migration {name} is {}: state {}, lag {} (waited {:.1}s)\n",
                    goal,
                    text(&migration, "state"),
                    lag(&migration),
                    started.elapsed().as_secs_f64()
                ),
            )
        }
        MigrationCommand::Cutover {
            name,
            dry_run,
            max_lag,
            timeout,
            freeze_limit,
            counts_only,
            checksums: _,
            reverse,
            reverse_name,
            webhook,
            follow: how,
        } => {
            let mut body = json!({
                "dry_run": dry_run,
                "max_lag_seconds": max_lag.as_secs_f64(),
                "checksums": !counts_only,
                "reverse": reverse,
            });
            if let Some(t) = timeout {
                body["timeout_seconds"] = t.as_secs_f64().into();
            }
            if let Some(t) = freeze_limit {
                body["freeze_limit_seconds"] = t.as_secs_f64().into();
            }
            if let Some(n) = reverse_name {
                body["reverse_name"] = n.into();
            }
            if let Some(url) = webhook {
                body["webhook_url"] = url.into();
            }
            let op = api.post(&format!("{}/cutover", path(&name)), body).await?;
            follow(&api, op, &how.with(json), out).await
        }
        MigrationCommand::Ddl { name, file } => {
            let sql = if file.as_os_str() == "-" {
                let mut sql = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut sql).map_err(|e| {
                    ClientError::Usage(format!("reading the statements from standard input: {e}"))
                })?;
                sql
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| ClientError::Usage(format!("reading {}: {e}", file.display())))?
            };
            let m = api
                .post(&format!("{}/ddl", path(&name)), json!({ "sql": sql }))
                .await?;
            if json {
                return print_json(out, &m);
            }
            print(
                out,
                &format!(
                    "migration {name}: the schema change is committed on the source; the target applies it at the same point of the stream (watch `pgshift migration show {name}` for errors)\n"
                ),
            )
        }
        MigrationCommand::Unfreeze { name } => {
            let done = api
                .post(&format!("{}/unfreeze", path(&name)), json!({}))
                .await?;
            if json {
                return print_json(out, &done);
            }
            let said = if done["lifted"] == true {
                "the freeze on its source is lifted"
            } else {
                "its source was not frozen"
            };
            print(
                out,
                &format!(
                    "migration {name}: {said}
"
                ),
            )
        }
        MigrationCommand::CutoverAbort { name } => {
            let op = api
                .post(&format!("{}/cutover/abort", path(&name)), json!({}))
                .await?;
            if json {
                return print_json(out, &op);
            }
            print(
                out,
                &format!(
                    "{} {} of migration {name} is aborting (follow it with: pgshift operation show {})\n",
                    text(&op, "kind"),
                    text(&op, "id"),
                    text(&op, "id"),
                ),
            )
        }
        MigrationCommand::Verify {
            name,
            repair,
            range_rows,
            follow: how,
        } => {
            let mut body = json!({"repair": repair});
            if let Some(r) = range_rows {
                body["range_rows"] = r.into();
            }
            let op = api.post(&format!("{}/verify", path(&name)), body).await?;
            follow(&api, op, &how.with(json), out).await
        }
    }
}

fn path(name: &str) -> String {
    format!("/migrations/{}", segment(name))
}

async fn act(
    api: &Api,
    out: &mut dyn Write,
    json: bool,
    name: &str,
    action: &str,
) -> Result<(), ClientError> {
    let migration = api
        .post(&format!("{}/{action}", path(name)), json!({}))
        .await?;
    if json {
        return print_json(out, &migration);
    }
    print(
        out,
        &format!("migration {name}: {}\n", text(&migration, "state")),
    )
}

/// `pgshift migration tables add|remove`: the migration's new table set is printed.
async fn tables(
    api: &Api,
    out: &mut dyn Write,
    json: bool,
    command: TablesCommand,
) -> Result<(), ClientError> {
    let (name, migration, done) = match command {
        TablesCommand::Add {
            name,
            patterns,
            empty_target,
        } => {
            let body = json!({"tables": patterns, "empty_target": empty_target});
            let migration = api.post(&format!("{}/tables", path(&name)), body).await?;
            (name, migration, "tables added; they are copied next")
        }
        TablesCommand::Remove { name, table } => {
            let migration = api
                .delete(&format!("{}/tables/{}", path(&name), segment(&table)))
                .await?;
            let done = "table no longer replicated (its rows on the target stay)";
            (name, migration, done)
        }
    };
    if json {
        return print_json(out, &migration);
    }
    let rows: Vec<Vec<String>> = migration["tables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| vec![text(t, "name"), text(t, "state")])
        .collect();
    print(
        out,
        &format!(
            "migration {name}: {done}\n{}",
            table::render(&["TABLE", "STATE"], &rows)
        ),
    )
}

/// `CLUSTER:DATABASE` as the API's `{cluster, database}`.
fn endpoint(flag: &str, value: &str) -> Result<Value, ClientError> {
    match value.split_once(':') {
        Some((cluster, database)) if !cluster.is_empty() && !database.is_empty() => {
            Ok(json!({"cluster": cluster, "database": database}))
        }
        _ => Err(ClientError::Usage(format!(
            "{flag} {value:?} must be CLUSTER:DATABASE, e.g. old:shop"
        ))),
    }
}

pub(super) fn side(endpoint: &Value) -> String {
    format!(
        "{}:{}",
        text(endpoint, "cluster"),
        text(endpoint, "database")
    )
}

/// Lag for people: `0.1s`, or `-` while unknown.
pub(super) fn lag(migration: &Value) -> String {
    migration["lag_seconds"]
        .as_f64()
        .map_or_else(|| "-".into(), |l| format!("{l:.1}s"))
}

/// `synced/total` tables.
pub(super) fn tables_synced(migration: &Value) -> String {
    let tables = migration["tables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let synced = tables.iter().filter(|t| t["state"] == "synced").count();
    format!("{synced}/{}", tables.len())
}
