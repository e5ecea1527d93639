//! Server configuration: defaults, then `PGSHIFT_*` environment, then flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::EngineSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./pgshift-data";

/// What `pgshift serve` runs with.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Holds the SQLite metadata file (unless `metadata` is set) and the token signing key.
    pub data_dir: PathBuf,
    /// `postgres://` or `postgresql://` URL of a shared PostgreSQL metadata store; `None`: SQLite
    /// in `data_dir`. May carry a password: `Debug` leaves it out.
    pub metadata: Option<String>,
    pub engine: EngineSettings,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "metadata",
                &self.metadata.as_deref().map(crate::store::redact_url),
            )
            .field("engine", &self.engine)
            .finish()
    }
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            metadata: None,
            engine: EngineSettings::default(),
        }
    }
}

/// Creates the data directory (private to this user) if it does not exist.
pub fn ensure_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_the_metadata_password_out() {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), "d".into());
        config.metadata = Some("postgresql://u:secretpw@db.example:5432/meta".into());
        let text = format!("{config:?}");
        assert!(!text.contains("secretpw"), "{text}");
        assert!(text.contains("db.example:5432/meta"), "{text}");
    }
}
