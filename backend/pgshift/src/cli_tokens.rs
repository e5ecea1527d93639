//! Command-line layer: `pgshift token create|list|revoke`: run beside the server (same data
//! directory or metadata store), without going through the API, so that the first admin token can
//! be made.

use std::io::Write;

use clap::Subcommand;

use crate::auth::Keys;
use crate::base::Role;
use crate::client::{table, Exit};
use crate::config::{self, ConfigFile, StoreSettings};
use crate::service::tokens::{self, NewToken, DEFAULT_TTL_HOURS};
use crate::service::ServiceError;
use crate::store::Store;

/// Where the signing key and the token records are: the server's own settings.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    #[command(flatten)]
    store: StoreSettings,
    #[command(flatten)]
    file: ConfigFile,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new bearer token signed with the server's key, and record it.
    Create {
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// Who the token is for (recorded, and shown in the token list and the audit trail).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = DEFAULT_TTL_HOURS)]
        ttl_hours: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List recorded tokens (never the tokens themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by id: every server sharing the metadata store refuses it from its next request.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Runs a token command; the new token (or the list) on `out`, a one-line reason on `err`.
pub fn run(command: TokenCommand, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "pgshift: cannot start: {e}");
            return Exit::Api;
        }
    };
    match runtime.block_on(execute(command, out)) {
        Ok(()) => Exit::Ok,
        Err(Failure(exit, reason)) => {
            let _ = writeln!(err, "pgshift: {reason}");
            exit
        }
    }
}

struct Failure(Exit, String);

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        let exit = match e {
            ServiceError::NotFound(_) => Exit::NotFound,
            ServiceError::Invalid { .. } => Exit::Usage,
            _ => Exit::Api,
        };
        Failure(exit, e.to_string())
    }
}

async fn execute(command: TokenCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match command {
        TokenCommand::Create {
            role,
            subject,
            ttl_hours,
            store,
        } => {
            let (keys, store) = open(store, true).await?;
            let keys = keys.expect("asked for the keys");
            let new = NewToken {
                role,
                subject,
                ttl_hours: Some(ttl_hours),
            };
            let issued = tokens::issue(store.as_ref(), &keys, new, "cli").await?;
            write(out, &format!("{}\n", issued.token))
        }
        TokenCommand::List { json, store } => {
            let (_, store) = open(store, false).await?;
            let list = tokens::list(store.as_ref()).await?;
            if json {
                let text = serde_json::to_string_pretty(&list).expect("tokens serialize");
                return write(out, &format!("{text}\n"));
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.subject.clone(),
                        t.role.to_string(),
                        t.state.clone(),
                        t.created_by.clone(),
                        t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        t.expires_at.format("%Y-%m-%d %H:%M").to_string(),
                    ]
                })
                .collect();
            write(
                out,
                &table::render(
                    &["ID", "SUBJECT", "ROLE", "STATE", "BY", "CREATED", "EXPIRES"],
                    &rows,
                ),
            )
        }
        TokenCommand::Revoke { id, store } => {
            let (_, store) = open(store, false).await?;
            tokens::revoke(store.as_ref(), &id).await?;
            write(out, &format!("token {id} revoked\n"))
        }
    }
}

/// The signing key (only to issue: listing and revoking never create one) and the store.
async fn open(
    args: StoreArgs,
    with_keys: bool,
) -> Result<(Option<Keys>, std::sync::Arc<dyn Store>), Failure> {
    let usage = |e: String| Failure(Exit::Usage, e);
    let (file, _) =
        config::load_file(args.file.config.as_deref()).map_err(|e| usage(e.to_string()))?;
    let store = config::resolve_store(file, args.store);
    let (data_dir, metadata) = (store.data_dir(), store.metadata);
    let keys = if with_keys {
        Some(Keys::load_or_create(&data_dir).map_err(|e| Failure(Exit::Api, e.to_string()))?)
    } else {
        None
    };
    if metadata.is_none() {
        crate::base::DataDir::new(&data_dir).create().map_err(|e| {
            Failure(
                Exit::Api,
                format!(
                    "cannot create the data directory {}: {e}",
                    data_dir.display()
                ),
            )
        })?;
    }
    let store = crate::store::open(metadata.as_deref(), &data_dir)
        .await
        .map_err(|e| Failure(Exit::Api, format!("cannot open the metadata store: {e}")))?;
    Ok((keys, store))
}

fn write(out: &mut dyn Write, text: &str) -> Result<(), Failure> {
    out.write_all(text.as_bytes())
        .map_err(|e| Failure(Exit::Api, format!("cannot write output: {e}")))
}
