//! Command-line layer (the API client): `pgshift cluster add|list|remove`.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use super::api::{Api, ClientError};
use super::{print, print_json, table, text, Connection};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Register a PostgreSQL server; pgshift connects to it before storing it.
    Add {
        /// Name to refer to it by (letters, digits, '-', '_', '.').
        name: String,
        /// postgresql://user:password@host:port/db. Prefer PGSHIFT_CLUSTER_DSN: a flag's value is
        /// visible to other users of the machine in the process list.
        #[arg(long, env = "PGSHIFT_CLUSTER_DSN", hide_env_values = true)]
        dsn: String,
    },
    /// List the registered clusters.
    List,
    /// Forget a cluster (refused while a migration uses it).
    Remove { name: String },
}

pub async fn run(
    connection: &Connection,
    command: ClusterCommand,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let api = Api::new(&connection.url, connection.token.clone())?;
    match command {
        ClusterCommand::Add { name, dsn } => {
            let cluster = api
                .post("/clusters", json!({"name": name, "dsn": dsn}))
                .await?;
            if connection.json {
                return print_json(out, &cluster);
            }
            print(
                out,
                &format!(
                    "cluster {} added: PostgreSQL {} at {}\n",
                    text(&cluster, "name"),
                    text(&cluster, "server_version"),
                    text(&cluster, "dsn"),
                ),
            )
        }
        ClusterCommand::List => {
            let clusters = api.get("/clusters").await?;
            if connection.json {
                return print_json(out, &clusters);
            }
            let rows: Vec<Vec<String>> = clusters
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    vec![
                        text(c, "name"),
                        text(c, "server_version"),
                        text(c, "dsn"),
                        text(c, "created_at"),
                    ]
                })
                .collect();
            print(
                out,
                &table::render(&["NAME", "VERSION", "DSN", "CREATED"], &rows),
            )
        }
        ClusterCommand::Remove { name } => {
            api.delete(&format!("/clusters/{}", segment(&name))).await?;
            if connection.json {
                return print_json(out, &json!({"removed": "cluster", "name": name}));
            }
            print(out, &format!("cluster {name} removed\n"))
        }
    }
}

/// A name as one URL path segment: names are plain, but never let one change the path.
pub(super) fn segment(name: &str) -> String {
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}
