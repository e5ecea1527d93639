//! The command line: `pgshift serve` and `pgshift token create`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::auth::{Keys, Role};
use crate::config::{ServeConfig, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use crate::engine::EngineSettings;

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Move live PostgreSQL databases between servers with almost no downtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DataDir {
    /// Directory holding the metadata database and the token signing key.
    #[arg(long, env = "PGSHIFT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: REST API and the migration engine.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "PGSHIFT_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[command(flatten)]
        data: DataDir,
        /// Metadata database: postgresql://… for a shared PostgreSQL store; default: SQLite in the data directory.
        #[arg(
            long,
            env = "PGSHIFT_METADATA",
            value_name = "URL",
            hide_env_values = true
        )]
        metadata: Option<String>,
        /// Tables copied at once during the initial copy.
        #[arg(long, env = "PGSHIFT_COPY_PARALLELISM", default_value_t = EngineSettings::default().copy_parallelism as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        copy_parallelism: u16,
        /// Rows per initial-copy chunk; each chunk commits its position, so a crash loses at most one.
        #[arg(long, env = "PGSHIFT_COPY_CHUNK_ROWS", default_value_t = EngineSettings::default().copy_chunk_rows,
              value_parser = clap::value_parser!(i64).range(100..=10_000_000))]
        copy_chunk_rows: i64,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new bearer token signed with the server's key.
    Create {
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// Who the token is for (recorded in the token).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24 * 30)]
        ttl_hours: u64,
        #[command(flatten)]
        data: DataDir,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PGSHIFT_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Entry point of the binary.
pub fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve {
            listen,
            data,
            metadata,
            copy_parallelism,
            copy_chunk_rows,
        } => {
            init_tracing();
            let mut config = ServeConfig::new(listen, data.data_dir);
            config.metadata = metadata;
            config.engine.copy_parallelism = usize::from(copy_parallelism);
            config.engine.copy_chunk_rows = copy_chunk_rows;
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(serve(config))
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    role,
                    subject,
                    ttl_hours,
                    data,
                },
        } => match Keys::load_or_create(&data.data_dir) {
            Ok(keys) => {
                println!(
                    "{}",
                    keys.issue(&subject, role, Duration::from_secs(ttl_hours * 3600))
                );
                0
            }
            Err(e) => {
                eprintln!("pgshift: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

async fn serve(config: ServeConfig) -> i32 {
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pgshift: {e}");
            return 1;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            1
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
