//! Command-line layer: the command line: `pgshift serve`, `pgshift token create|list|revoke`,
//! `pgshift user create`, and the client commands (`pgshift cluster …`, `pgshift migration …`, see
//! [`crate::client`]).

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::base::Role;
use crate::cli_tokens::TokenCommand;
use crate::client::ClientCommand;
use crate::config::{self, ConfigFile, ServeConfig, Settings, StoreSettings};

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

#[derive(Subcommand)]
enum Command {
    /// Run the server: REST API and the migration engine.
    Serve {
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Manage API tokens (beside the server: same data directory or metadata store).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
    /// Manage dashboard users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a dashboard user. Without --password-stdin a password is generated and printed once.
    Create {
        /// The user's sign-in name.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// Read the password from the first line of standard input (at least 12 characters).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// List dashboard users.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Remove a dashboard user; their sessions end at once.
    Remove {
        name: String,
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Set a user's password (generated and printed once without --password-stdin); their sessions end at once.
    SetPassword {
        name: String,
        /// Read the password from the first line of standard input (at least 12 characters).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Set a user's role; their sessions end at once.
    SetRole {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: Role,
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        file: ConfigFile,
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
    // The client commands parse on their own, so that usage errors get the client's exit code.
    let first = std::env::args().nth(1).unwrap_or_default();
    if ClientCommand::NAMES.contains(&first.as_str()) {
        let exit = crate::client::run(
            std::env::args_os(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        );
        std::process::exit(i32::from(exit.code()));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { settings, file } => {
            let config = config::load_file(file.config.as_deref())
                .and_then(|(file, _)| config::resolve(file, settings));
            match config {
                Ok(config) => {
                    init_tracing();
                    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
                    runtime.block_on(serve(config))
                }
                Err(e) => {
                    eprintln!("pgshift: {e}");
                    2
                }
            }
        }
        Command::Token { command } => {
            let exit =
                crate::cli_tokens::run(command, &mut std::io::stdout(), &mut std::io::stderr());
            i32::from(exit.code())
        }
        Command::Client(command) => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            let exit = runtime.block_on(crate::client::execute(
                command,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ));
            i32::from(exit.code())
        }
        Command::User {
            command:
                UserCommand::Create {
                    name,
                    role,
                    password_stdin,
                    store,
                    file,
                },
        } => user_create(&name, role, password_stdin, store, file),
        Command::User { command } => user_manage(command),
    };
    std::process::exit(code);
}

/// `pgshift user create`: writes the user straight into the metadata store the server uses.
fn user_create(
    name: &str,
    role: Role,
    password_stdin: bool,
    store: StoreSettings,
    config_file: ConfigFile,
) -> i32 {
    use crate::service::users;
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("pgshift: cannot read the password from standard input: {e}");
            return 1;
        }
        (line.trim_end_matches(['\r', '\n']).to_string(), false)
    } else {
        (users::generate_password(), true)
    };
    let (file, _) = match config::load_file(config_file.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pgshift: {e}");
            return 2;
        }
    };
    let store = config::resolve_store(file, store);
    let (dir, metadata) = (store.data_dir(), store.metadata);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        if metadata.is_none() {
            crate::base::DataDir::new(&dir)
                .create()
                .map_err(|e| e.to_string())?;
        }
        let store = crate::store::open(metadata.as_deref(), &dir)
            .await
            .map_err(|e| e.to_string())?;
        users::create(store.as_ref(), name, role, &password)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(user) => {
            if generated {
                println!("{password}");
                eprintln!(
                    "pgshift: created {} user {:?}; the password above is shown only once",
                    user.role, user.name
                );
            } else {
                eprintln!("pgshift: created {} user {:?}", user.role, user.name);
            }
            0
        }
        Err(e) => {
            eprintln!("pgshift: {e}");
            1
        }
    }
}

/// The password for `user create` or `user set-password`: the first line of standard input, or
/// a generated one (`true`: print it once).
fn read_or_generate_password(password_stdin: bool) -> Result<(String, bool), String> {
    if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        Ok((line.trim_end_matches(['\r', '\n']).to_string(), false))
    } else {
        Ok((crate::service::users::generate_password(), true))
    }
}

/// `pgshift user list|remove|set-password|set-role`, straight on the metadata store the server
/// uses. A changed or removed user's sessions end at once (the server reads them from the store
/// on every request). Exit codes: 1 refused or failed, 2 bad configuration, 4 no such user.
fn user_manage(command: UserCommand) -> i32 {
    use crate::service::{users, ServiceError};
    let (store_settings, config_file) = match &command {
        UserCommand::Create { store, file, .. }
        | UserCommand::List { store, file, .. }
        | UserCommand::Remove { store, file, .. }
        | UserCommand::SetPassword { store, file, .. }
        | UserCommand::SetRole { store, file, .. } => (store.clone(), file.clone()),
    };
    let (file, _) = match config::load_file(config_file.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pgshift: {e}");
            return 2;
        }
    };
    let resolved = config::resolve_store(file, store_settings);
    let (dir, metadata) = (resolved.data_dir(), resolved.metadata);
    let password = match &command {
        UserCommand::SetPassword { password_stdin, .. } => {
            match read_or_generate_password(*password_stdin) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("pgshift: {e}");
                    return 1;
                }
            }
        }
        _ => None,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result: Result<String, ServiceError> = runtime.block_on(async {
        let store = crate::store::open(metadata.as_deref(), &dir).await?;
        let store = store.as_ref();
        match command {
            UserCommand::List { json, .. } => {
                let list = users::list(store).await?;
                if json {
                    let rows: Vec<serde_json::Value> = list
                        .iter()
                        .map(|u| {
                            serde_json::json!({"name": u.name, "role": u.role, "created_at": u.created_at})
                        })
                        .collect();
                    Ok(serde_json::to_string_pretty(&rows).expect("users serialize") + "\n")
                } else {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|u| {
                            vec![
                                u.name.clone(),
                                u.role.to_string(),
                                u.created_at.format("%Y-%m-%d %H:%M").to_string(),
                            ]
                        })
                        .collect();
                    Ok(crate::client::table::render(&["NAME", "ROLE", "CREATED"], &rows))
                }
            }
            UserCommand::Remove { name, .. } => {
                users::remove(store, &name).await?;
                eprintln!("pgshift: removed user {name:?}; their sessions ended");
                Ok(String::new())
            }
            UserCommand::SetPassword { name, .. } => {
                let (password, generated) = password.expect("read above");
                users::set_password(store, &name, &password).await?;
                eprintln!("pgshift: set the password of {name:?}; their sessions ended");
                Ok(if generated {
                    format!("{password}\n")
                } else {
                    String::new()
                })
            }
            UserCommand::SetRole { name, role, .. } => {
                users::set_role(store, &name, role).await?;
                eprintln!("pgshift: {name:?} is now {role}; their sessions ended");
                Ok(String::new())
            }
            UserCommand::Create { .. } => unreachable!("handled by user_create"),
        }
    });
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e @ ServiceError::NotFound(_)) => {
            eprintln!("pgshift: {e}");
            4
        }
        Err(e) => {
            eprintln!("pgshift: {e}");
            1
        }
    }
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
