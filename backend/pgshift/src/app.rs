//! Start-up layer: building and running the server. `Application::build` opens what the server
//! works with (the data directory, keys, the store, the supervisor) and binds the listener (port
//! 0 in tests); [`router`] puts the API, the dashboard and the health routes together;
//! `run_until_stopped` serves until the shutdown future resolves, then stops every migration.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{KeyError, Keys};
use crate::base::Role;
use crate::base::{DataDir, TaskSet};
use crate::config::ServeConfig;
use crate::engine::Supervisor;
use crate::secrets::{SecretError, Secrets};
use axum::routing::get;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::service::{App, AppState};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the data directory is not private: {0}")]
    DataDirNotPrivate(#[from] crate::base::data_dir::NotPrivate),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot load the secret keys: {0}")]
    Secrets(#[from] SecretError),
    #[error("cannot open the metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create the first dashboard admin: {0}")]
    FirstAdmin(crate::service::ServiceError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    app: Arc<App>,
}

impl Application {
    pub async fn build(config: ServeConfig) -> Result<Self, StartError> {
        let data_dir = DataDir::new(&config.data_dir);
        data_dir.create().map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        // It holds password hashes, session and CSRF tokens and the keys: an existing directory
        // (restored, copied, made by hand) is made private again before anything is read.
        let owned: Vec<&str> = [crate::auth::KEY_FILE, crate::secrets::KEY_FILE]
            .into_iter()
            .chain(crate::store::SQLITE_FILES)
            .collect();
        for change in data_dir.make_private(&owned)? {
            tracing::warn!(
                path = %change.path.display(),
                was = format!("{:04o}", change.was),
                now = format!("{:04o}", change.now),
                "the data directory was open to other users: mode changed"
            );
        }
        let keys = Keys::load_or_create(&config.data_dir)?;
        let store = crate::store::open(config.metadata.as_deref(), &config.data_dir).await?;
        let secrets = Arc::new(Secrets::load_with(
            config.secret_keys.as_deref(),
            &config.data_dir,
        )?);
        crate::service::users::ensure_first_admin(store.as_ref(), config.admin_password.clone())
            .await
            .map_err(StartError::FirstAdmin)?;
        let supervisor = Supervisor::new(store.clone(), secrets.clone(), config.engine.clone());
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            app: Arc::new(App {
                store,
                supervisor,
                keys,
                secrets,
                sign_in_throttle: Default::default(),
                lag_history: Default::default(),
                operations: crate::service::operations::Operations::new(
                    crate::service::operations::WebhookPolicy::new(
                        config.webhook_allowed_networks.clone(),
                    ),
                ),
                unauthenticated: Default::default(),
                trusted_proxies: crate::service::audit::TrustedProxies::new(
                    config.trusted_proxies.clone(),
                ),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The router this application serves (tests read the routes it has from it).
    pub fn router(&self) -> Router {
        router(self.app.clone())
    }

    /// A token signed by this server and recorded (tests), valid for `ttl` rounded up to hours.
    pub async fn issue_token(
        &self,
        role: Role,
        ttl: Duration,
    ) -> Result<String, crate::service::ServiceError> {
        let new = crate::service::tokens::NewToken {
            role,
            subject: "pgshift".into(),
            ttl_hours: Some(ttl.as_secs().div_ceil(3600).max(1)),
        };
        crate::service::tokens::issue(self.app.store.as_ref(), &self.app.keys, new, "pgshift")
            .await
            .map(|issued| issued.token)
    }

    /// Resumes running migrations, serves requests until `shutdown` resolves, then stops every
    /// migration (waiting at most 30 s, naming the ones that did not stop).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Err(err) = crate::service::recovery::recover(&self.app).await {
            tracing::error!(error = %err, "cannot finish operations left running by a crash");
        }
        if let Err(err) = self.app.supervisor.resume_all().await {
            tracing::error!(error = %err, "cannot resume migrations");
        }
        tracing::info!(addr = %self.local_addr(), "pgshift listening");
        // The server's own background tasks, beside the supervisor's runs and the operations.
        let background: TaskSet<&'static str> = TaskSet::new("background task");
        let app = self.app.clone();
        background.spawn("lag sampler", (), |cancel| {
            crate::service::lag_history::run_sampler(app, cancel)
        });
        let router = router(self.app.clone());
        // The peer address goes into the audit trail and the sign-in throttle.
        let result = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        background.shutdown(Duration::from_secs(30)).await;
        self.app.operations.shutdown(Duration::from_secs(30)).await;
        self.app.supervisor.shutdown(Duration::from_secs(30)).await;
        tracing::info!("pgshift stopped");
        result
    }
}

/// The server's routes: the API under `/api/v1`, the dashboard under `/ui`, health, readiness and
/// metrics at the top; every request counted and traced, every body at most 1 MiB.
pub fn router(app: AppState) -> Router {
    let (operations, http_metrics) = crate::http::operations(app.clone());
    Router::new()
        .nest("/api/v1", crate::http::api(app.clone()))
        .route("/healthz", get(crate::http::healthz))
        .merge(crate::dashboard::router())
        .with_state(app)
        .merge(operations)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            crate::http::track,
        ))
        .layer(RequestBodyLimitLayer::new(1024 * 1024))
        .layer(TraceLayer::new_for_http())
}
