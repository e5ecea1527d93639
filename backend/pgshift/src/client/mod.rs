//! Command-line layer (the API client, which talks HTTP to a server and imports nothing of
//! it): the `pgshift` binary as a client of a running server: `pgshift cluster …` and
//! `pgshift migration …`, for people (aligned tables) and pipelines (`--json`, documented exit
//! codes, `migration wait`). The dispatch lives here, writing to the given streams, so tests drive
//! it in-process; the binary only passes its arguments and real stdout/stderr.

mod api;
mod clusters;
mod duration;
mod exit;
mod migration_show;
mod migrations;
mod operations;
pub mod table;
mod wait;

use std::ffi::OsString;
use std::io::Write;

use clap::{Parser, Subcommand};

pub use api::ClientError;
pub use exit::Exit;

/// Where the server is and how to authenticate; accepted before or after the subcommand.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// The pgshift server.
    #[arg(
        long,
        env = "PGSHIFT_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Bearer token (from `pgshift token create` or POST /api/v1/tokens).
    #[arg(long, env = "PGSHIFT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON (the API's own objects) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Shown under every client command's help.
const EXIT_CODES: &str = "Exit codes: 0 done, 2 usage error, 3 refused or failed by the server, \
4 not found, 5 timed out (migration wait), 6 server unreachable, \
7 verification found differences (migration verify), 8 cutover or verification failed or aborted; \
every failure prints one line on stderr saying why.";

/// The client's subcommands, also part of the binary's own command line (see `cli.rs`).
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Clusters on a pgshift server (PGSHIFT_URL, PGSHIFT_TOKEN).
    #[command(after_help = EXIT_CODES)]
    Cluster {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: clusters::ClusterCommand,
    },
    /// Migrations on a pgshift server (PGSHIFT_URL, PGSHIFT_TOKEN).
    #[command(after_help = EXIT_CODES)]
    Migration {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: migrations::MigrationCommand,
    },
    /// Cutovers and verifications by id (PGSHIFT_URL, PGSHIFT_TOKEN).
    #[command(after_help = EXIT_CODES)]
    Operation {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: operations::OperationCommand,
    },
}

impl ClientCommand {
    /// The first argument of every client command, so `main` knows whose parser to use.
    pub const NAMES: &'static [&'static str] = &["cluster", "migration", "operation"];
}

#[derive(Parser, Debug)]
#[command(name = "pgshift")]
struct ClientCli {
    #[command(subcommand)]
    command: ClientCommand,
}

/// Parses `args` (the program name first) and runs the command on a runtime of its own.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "pgshift: cannot start: {e}");
            return Exit::Api;
        }
    };
    runtime.block_on(run_async(args, out, err))
}

/// [`run`] for callers already on a tokio runtime (tests).
pub async fn run_async<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match ClientCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage(e, out, err),
    };
    execute(cli.command, out, err).await
}

/// Runs a parsed command: its output on `out`, and on failure one line on `err`.
pub async fn execute(command: ClientCommand, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let mut buffer = Vec::new();
    let result = match command {
        ClientCommand::Cluster {
            connection,
            command,
        } => clusters::run(&connection, command, &mut buffer).await,
        ClientCommand::Migration {
            connection,
            command,
            // Written straight to `out`: a cutover or verification prints each step as it finishes.
        } => migrations::run(&connection, command, out).await,
        ClientCommand::Operation {
            connection,
            command,
        } => operations::run(&connection, command, out).await,
    };
    let _ = out.write_all(&buffer);
    let _ = out.flush();
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            let _ = writeln!(err, "pgshift: {}", one_line(&e.to_string()));
            e.exit()
        }
    }
}

/// Help and version go to `out` with success; any other parse error is a usage error whose first
/// line (clap's `error: …`) goes to `err`.
fn usage(e: clap::Error, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let help = e.render().to_string();
            let _ = writeln!(out, "{}", help.trim_end());
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = writeln!(err, "pgshift: a subcommand is missing (see the help above)");
                return Exit::Usage;
            }
            Exit::Ok
        }
        _ => {
            // clap's message is its first paragraph (the arguments a message names may be on
            // the lines below its first); the usage and hints after it are left out.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .trim_start()
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = message.join(" ");
            let line = line.trim_start_matches("error: ");
            let _ = writeln!(err, "pgshift: {line} (see --help)");
            Exit::Usage
        }
    }
}

/// Messages from servers may hold line breaks; the reason line must stay one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes `value` as pretty JSON.
fn print_json(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    writeln!(out, "{text}").map_err(|e| ClientError::Usage(format!("cannot write output: {e}")))
}

/// Writes text for people.
fn print(out: &mut dyn Write, text: &str) -> Result<(), ClientError> {
    write!(out, "{text}").map_err(|e| ClientError::Usage(format!("cannot write output: {e}")))
}

/// A JSON string field, or `-`.
fn text(value: &serde_json::Value, field: &str) -> String {
    match &value[field] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}
