//! Server configuration: defaults, then `PGSHIFT_*` environment, then flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::EngineSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./pgshift-data";

/// What `pgshift serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Holds the SQLite metadata file and the token signing key.
    pub data_dir: PathBuf,
    pub engine: EngineSettings,
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
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
