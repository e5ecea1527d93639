//! Server configuration, in layers: defaults, then `pgshift.toml`, then `PGSHIFT_*` environment,
//! then flags (clap merges the last two into [`Overrides`]). Validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
                &self.metadata.as_deref().map(crate::base::redact_url),
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

/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "pgshift.toml";

/// `pgshift.toml`: every key optional; unknown keys are refused so a typo never goes unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub metadata: Option<String>,
    pub copy_parallelism: Option<i64>,
    pub copy_chunk_rows: Option<i64>,
}

/// Values from the environment or flags; they win over the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub metadata: Option<String>,
    pub copy_parallelism: Option<i64>,
    pub copy_chunk_rows: Option<i64>,
}

/// A configuration that cannot be used, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Reads `explicit` (which must exist), or `pgshift.toml` in the working directory if present.
pub fn load_file(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok((FileConfig::default(), None)),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.message().to_string(),
    })?;
    Ok((file, Some(path)))
}

/// The data directory alone (for `pgshift token …`): override, then file, then default.
pub fn data_dir(file: &FileConfig, over: Option<PathBuf>) -> PathBuf {
    over.or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Merges the layers and checks every value.
pub fn resolve(file: FileConfig, over: Overrides) -> Result<ServeConfig, ConfigError> {
    let listen = match (over.listen, &file.listen) {
        (Some(addr), _) => addr,
        (None, Some(text)) => text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listen = {text:?} is not an address like 127.0.0.1:8080"
            ))
        })?,
        (None, None) => DEFAULT_LISTEN.parse().expect("default address parses"),
    };
    let mut config = ServeConfig::new(listen, data_dir(&file, over.data_dir));
    config.metadata = over.metadata.or(file.metadata);
    let parallelism = over.copy_parallelism.or(file.copy_parallelism);
    if let Some(n) = parallelism {
        if !(1..=64).contains(&n) {
            return Err(ConfigError::Invalid(format!(
                "copy_parallelism = {n} must be between 1 and 64"
            )));
        }
        config.engine.copy_parallelism = n as usize;
    }
    if let Some(n) = over.copy_chunk_rows.or(file.copy_chunk_rows) {
        if !(100..=10_000_000).contains(&n) {
            return Err(ConfigError::Invalid(format!(
                "copy_chunk_rows = {n} must be between 100 and 10000000"
            )));
        }
        config.engine.copy_chunk_rows = n;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file = parse(
            "listen = \"0.0.0.0:9000\"\ncopy_chunk_rows = 1000\ndata_dir = \"/var/lib/pgshift\"",
        );
        let over = Overrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let config = resolve(file, over).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.engine.copy_chunk_rows, 1000);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/pgshift"));
        assert_eq!(
            config.engine.copy_parallelism,
            EngineSettings::default().copy_parallelism
        );
    }

    #[test]
    fn debug_leaves_the_metadata_password_out() {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), "d".into());
        config.metadata = Some("postgresql://u:secretpw@db.example:5432/meta".into());
        let text = format!("{config:?}");
        assert!(!text.contains("secretpw"), "{text}");
        assert!(text.contains("db.example:5432/meta"), "{text}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let file = parse(include_str!("../../../deploy/pgshift.toml.example"));
        let config = resolve(file, Overrides::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/pgshift"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let err = resolve(parse("copy_parallelism = 0"), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("copy_parallelism"));
        let err = resolve(parse("listen = \"nowhere\""), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen"));
    }
}
