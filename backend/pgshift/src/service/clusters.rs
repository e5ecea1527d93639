//! Service layer: registering the servers pgshift can reach.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{check_name, App, ServiceError, ServiceResult};
use crate::engine::pg;
use crate::secrets::Secrets;
use crate::store::Cluster;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCluster {
    pub name: String,
    pub dsn: String,
}

/// A cluster as shown to callers: the DSN without its password.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub dsn: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub server_version: String,
    pub created_at: DateTime<Utc>,
}

/// The DSN with the password left out.
pub fn redacted_dsn(dsn: &str) -> (String, String, u16, String) {
    match pg::options(dsn, None) {
        Ok(o) => {
            let host = o.get_host().to_string();
            let port = o.get_port();
            let user = o.get_username().to_string();
            let db = o.get_database().unwrap_or("").to_string();
            (
                format!("postgresql://{user}@{host}:{port}/{db}"),
                host,
                port,
                user,
            )
        }
        Err(_) => ("(unreadable)".into(), String::new(), 0, String::new()),
    }
}

impl ClusterView {
    /// Built from the decrypted DSN, shown without its password. A DSN that cannot be decrypted
    /// (its key is not configured) shows as unreadable rather than failing the listing.
    pub fn new(c: &Cluster, secrets: &Secrets) -> Self {
        let (dsn, host, port, user) = match secrets.decrypt(&c.dsn) {
            Ok(plain) => redacted_dsn(&plain),
            Err(err) => {
                tracing::warn!(cluster = %c.name, error = %err, "cannot decrypt a cluster's DSN");
                ("(unreadable)".into(), String::new(), 0, String::new())
            }
        };
        Self {
            name: c.name.clone(),
            dsn,
            host,
            port,
            user,
            server_version: c.server_version.clone(),
            created_at: c.created_at,
        }
    }
}

/// Connects to the server first, so a cluster that is stored is one that answered.
pub async fn add(app: &App, new: NewCluster) -> ServiceResult<ClusterView> {
    check_name("cluster", &new.name)?;
    if app.store.cluster_by_name(&new.name).await?.is_some() {
        return Err(ServiceError::conflict(
            "duplicate_name",
            format!("cluster {:?} already exists", new.name),
        ));
    }
    let options = pg::options(&new.dsn, None)?;
    let options = if options.get_database().is_none() {
        options.database("postgres")
    } else {
        options
    };
    let mut conn = pg::connect(&format!("cluster {:?}", new.name), &options).await?;
    let server_version = pg::server_version(&mut conn).await?;
    let cluster = Cluster {
        id: Uuid::new_v4(),
        name: new.name,
        // Stored encrypted; an older plaintext value is never written back as is.
        dsn: app.secrets.encrypt(&new.dsn)?,
        server_version,
        created_at: Utc::now(),
    };
    app.store.insert_cluster(&cluster).await?;
    tracing::info!(cluster = %cluster.name, version = %cluster.server_version, "cluster added");
    Ok(ClusterView::new(&cluster, &app.secrets))
}

pub async fn list(app: &App) -> ServiceResult<Vec<ClusterView>> {
    Ok(app
        .store
        .list_clusters()
        .await?
        .iter()
        .map(|c| ClusterView::new(c, &app.secrets))
        .collect())
}

pub async fn find(app: &App, name: &str) -> ServiceResult<Cluster> {
    app.store
        .cluster_by_name(name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("cluster {name:?}")))
}

pub async fn get(app: &App, name: &str) -> ServiceResult<ClusterView> {
    Ok(ClusterView::new(&find(app, name).await?, &app.secrets))
}

pub async fn remove(app: &App, name: &str) -> ServiceResult<()> {
    let cluster = find(app, name).await?;
    app.store
        .delete_cluster(cluster.id)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::InUse(by) => ServiceError::conflict(
                "cluster_in_use",
                format!("cluster {name:?} is used by {by}; remove the migration first"),
            ),
            other => other.into(),
        })?;
    tracing::info!(cluster = %name, "cluster removed");
    Ok(())
}
