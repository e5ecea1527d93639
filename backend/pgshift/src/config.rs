//! Start-up layer: the server's configuration, typed once. [`Settings`] declares every knob one
//! time: its flag and its `PGSHIFT_*` variable (clap reads both, the flag winning), its key in
//! `pgshift.toml` (serde, same name) and its help. [`resolve`] merges the layers once, defaults →
//! file → environment → flags, and checks every value before anything starts. The two secrets
//! (the secret keyring and the first admin's password) come from the environment only (a flag
//! would show in `ps`, a file would sit beside the data) and are read here, nowhere else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::EngineSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./pgshift-data";
/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "pgshift.toml";
/// The secret keyring, `id1:base64key,id2:base64key` (see `secrets`); when unset, the key file in
/// the data directory.
pub const SECRET_KEYS_ENV: &str = crate::secrets::ENV_VAR;
/// The password of the first dashboard admin, created on a store without users.
pub const ADMIN_PASSWORD_ENV: &str = crate::service::users::ADMIN_PASSWORD_ENV;

/// Where the metadata lives: the knobs `serve` shares with the `token` and `user` commands.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
pub struct StoreSettings {
    /// Directory holding the metadata database and the token signing key [default: ./pgshift-data].
    #[arg(long, env = "PGSHIFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Metadata database: postgresql://… for a shared PostgreSQL store; default: SQLite in the data directory.
    #[arg(
        long,
        env = "PGSHIFT_METADATA",
        value_name = "URL",
        hide_env_values = true
    )]
    pub metadata: Option<String>,
}

/// One layer of settings (the file, or the flags over the environment); every knob optional.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "PGSHIFT_LISTEN", value_parser = listen_address)]
    pub listen: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreSettings,
    /// Tables copied at once during the initial copy (1 to 64) [default: 2].
    #[arg(long, env = "PGSHIFT_COPY_PARALLELISM")]
    pub copy_parallelism: Option<i64>,
    /// Rows per initial-copy chunk (100 to 10000000); each chunk commits its position, so a crash
    /// loses at most one [default: 200000].
    #[arg(long, env = "PGSHIFT_COPY_CHUNK_ROWS")]
    pub copy_chunk_rows: Option<i64>,
    /// Directory holding the PostgreSQL client tools pg_dump and pg_restore, which read the
    /// source's schema for migrations that create the target's (schema "create"); they must be at
    /// least as new as the source [default: the newest in /usr/lib/postgresql/*/bin,
    /// /usr/pgsql-*/bin, /usr/local/pgsql/bin or PATH].
    #[arg(long, env = "PGSHIFT_PG_BIN_DIR", value_name = "DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// Longest time verification on demand holds back writes to one table, in seconds (0.1 to
    /// 600); when reached, the table is let go and reported as not verified [default: 5].
    #[arg(long, env = "PGSHIFT_VERIFY_HOLD_SECONDS")]
    pub verify_hold_seconds: Option<f64>,
    /// Networks (`10.1.0.0/16`, `127.0.0.1/32`, `fd00::/8`) where cutover webhooks may go
    /// besides public addresses; comma-separated on the command line.
    #[arg(long, env = "PGSHIFT_WEBHOOK_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub webhook_allowed_networks: Option<Vec<String>>,
    /// Reverse proxies (addresses or networks like `10.1.0.0/16`) whose `X-Forwarded-For` is
    /// believed; none by default, so the client is the connection's peer. Comma-separated on
    /// the command line.
    #[arg(long, env = "PGSHIFT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
}

/// The configuration file's location.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigFile {
    /// Configuration file [default: ./pgshift.toml when it exists]. Flags and PGSHIFT_* variables win over it.
    #[arg(long, env = "PGSHIFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Checks a `--listen` value as clap parses it, so a bad flag is a usage error at once.
fn listen_address(text: &str) -> Result<String, String> {
    text.parse::<SocketAddr>()
        .map(|_| text.to_string())
        .map_err(|_| format!("{text:?} is not an address like {DEFAULT_LISTEN}"))
}

impl StoreSettings {
    /// This layer, with `top`'s values where it has them.
    fn under(self, top: StoreSettings) -> StoreSettings {
        StoreSettings {
            data_dir: top.data_dir.or(self.data_dir),
            metadata: top.metadata.or(self.metadata),
        }
    }

    /// The data directory these settings name, or the default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

impl Settings {
    /// This layer, with `top`'s values where it has them.
    fn under(self, top: Settings) -> Settings {
        Settings {
            listen: top.listen.or(self.listen),
            store: self.store.under(top.store),
            copy_parallelism: top.copy_parallelism.or(self.copy_parallelism),
            copy_chunk_rows: top.copy_chunk_rows.or(self.copy_chunk_rows),
            pg_bin_dir: top.pg_bin_dir.or(self.pg_bin_dir),
            verify_hold_seconds: top.verify_hold_seconds.or(self.verify_hold_seconds),
            webhook_allowed_networks: top
                .webhook_allowed_networks
                .or(self.webhook_allowed_networks),
            trusted_proxies: top.trusted_proxies.or(self.trusted_proxies),
        }
    }

    /// The keys `pgshift.toml` may hold: exactly the knobs' names, as clap knows them.
    fn keys() -> Vec<String> {
        use clap::Args;
        Settings::augment_args(clap::Command::new("pgshift"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    }

    /// Parses `pgshift.toml`'s text. Unknown keys are refused, so a typo never goes unnoticed.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let known = Settings::keys();
        if let Some(unknown) = table.keys().find(|k| !known.contains(k)) {
            return Err(format!(
                "unknown key {unknown:?}; the keys are {}",
                known.join(", ")
            ));
        }
        Settings::deserialize(table).map_err(|e| e.message().to_string())
    }
}

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
    /// Networks where cutover webhooks may go besides public addresses (loopback, private and
    /// link-local addresses are refused unless listed here).
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,
    /// The reverse proxies whose `X-Forwarded-For` names the client; empty: no header is
    /// believed, the client is the connection's peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The secret keyring from [`SECRET_KEYS_ENV`]; `None`: the key file in the data directory.
    pub secret_keys: Option<String>,
    /// The first admin's password from [`ADMIN_PASSWORD_ENV`]; `None`: one is generated.
    pub admin_password: Option<String>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "(set)" } else { "(unset)" };
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "metadata",
                &self.metadata.as_deref().map(crate::base::redact_url),
            )
            .field("engine", &self.engine)
            .field("webhook_allowed_networks", &self.webhook_allowed_networks)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("secret_keys", &set(&self.secret_keys))
            .field("admin_password", &set(&self.admin_password))
            .finish()
    }
}

impl ServeConfig {
    /// Defaults, no secrets from the environment (tests build servers with this).
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            metadata: None,
            engine: EngineSettings::default(),
            webhook_allowed_networks: Vec::new(),
            trusted_proxies: Vec::new(),
            secret_keys: None,
            admin_password: None,
        }
    }
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
pub fn load_file(explicit: Option<&Path>) -> Result<(Settings, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok((Settings::default(), None)),
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = Settings::from_toml(&text).map_err(|message| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    })?;
    Ok((file, Some(path)))
}

/// The data directory and metadata store for the `token` and `user` commands: the file's, under
/// the flags and environment, as `serve` resolves them.
pub fn resolve_store(file: Settings, flags: StoreSettings) -> StoreSettings {
    file.store.under(flags)
}

/// The networks of a list knob (`key`): `10.1.0.0/16`, or a bare address meaning that one address.
fn networks(key: &str, values: Vec<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    values
        .iter()
        .map(|net| {
            net.parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|parsed| parsed.trunc())
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "{key}: {net:?} is not a network like 10.1.0.0/16 or an address"
                    ))
                })
        })
        .collect()
}

/// Merges the layers (defaults → file → environment → flags) and checks every value.
pub fn resolve(file: Settings, flags: Settings) -> Result<ServeConfig, ConfigError> {
    let merged = file.under(flags);
    let listen = merged.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "listen = {listen:?} is not an address like {DEFAULT_LISTEN}"
        ))
    })?;
    let mut config = ServeConfig::new(listen, merged.store.data_dir());
    config.metadata = merged.store.metadata;
    if let Some(n) = merged.copy_parallelism {
        if !(1..=64).contains(&n) {
            return Err(ConfigError::Invalid(format!(
                "copy_parallelism = {n} must be between 1 and 64"
            )));
        }
        config.engine.copy_parallelism = n as usize;
    }
    if let Some(n) = merged.copy_chunk_rows {
        if !(100..=10_000_000).contains(&n) {
            return Err(ConfigError::Invalid(format!(
                "copy_chunk_rows = {n} must be between 100 and 10000000"
            )));
        }
        config.engine.copy_chunk_rows = n;
    }
    if let Some(dir) = merged.pg_bin_dir {
        if !dir.join("pg_dump").is_file() || !dir.join("pg_restore").is_file() {
            return Err(ConfigError::Invalid(format!(
                "pg_bin_dir = {:?} holds no pg_dump and pg_restore",
                dir.display().to_string()
            )));
        }
        config.engine.pg_bin_dir = Some(dir);
    }
    if let Some(s) = merged.verify_hold_seconds {
        if !(0.1..=600.0).contains(&s) {
            return Err(ConfigError::Invalid(format!(
                "verify_hold_seconds = {s} must be between 0.1 and 600"
            )));
        }
        config.engine.verify_hold = std::time::Duration::from_secs_f64(s);
    }
    config.webhook_allowed_networks = networks(
        "webhook_allowed_networks",
        merged.webhook_allowed_networks.unwrap_or_default(),
    )?;
    config.trusted_proxies = networks(
        "trusted_proxies",
        merged.trusted_proxies.unwrap_or_default(),
    )?;
    // A blank keyring counts as unset: the key file is used.
    config.secret_keys = std::env::var(SECRET_KEYS_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    config.admin_password = std::env::var(ADMIN_PASSWORD_ENV).ok();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Settings {
        Settings::from_toml(text).unwrap()
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file = parse(
            "listen = \"0.0.0.0:9000\"\ncopy_chunk_rows = 1000\ndata_dir = \"/var/lib/pgshift\"",
        );
        let over = Settings {
            listen: Some("127.0.0.1:7000".into()),
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
    fn the_verification_hold_takes_whole_and_fractional_seconds() {
        let config = resolve(parse("verify_hold_seconds = 2"), Settings::default()).unwrap();
        assert_eq!(config.engine.verify_hold, std::time::Duration::from_secs(2));
        let over = Settings {
            verify_hold_seconds: Some(0.5),
            ..Default::default()
        };
        let config = resolve(parse("verify_hold_seconds = 2"), over).unwrap();
        assert_eq!(
            config.engine.verify_hold,
            std::time::Duration::from_millis(500)
        );
    }

    #[test]
    fn debug_leaves_the_metadata_password_out() {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), "d".into());
        config.metadata = Some("postgresql://u:secretpw@db.example:5432/meta".into());
        config.secret_keys = Some("k1:c2VjcmV0a2V5".into());
        config.admin_password = Some("adminsecret".into());
        let text = format!("{config:?}");
        assert!(!text.contains("secretpw"), "{text}");
        assert!(!text.contains("c2VjcmV0a2V5"), "{text}");
        assert!(!text.contains("adminsecret"), "{text}");
        assert!(text.contains("db.example:5432/meta"), "{text}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let file = parse(include_str!("../../../deploy/pgshift.toml.example"));
        let config = resolve(file, Settings::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/pgshift"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let err = Settings::from_toml("lisen = \"x\"").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(Settings::from_toml("copy_parallelism = \"two\"").is_err());
        let err = resolve(parse("copy_parallelism = 0"), Settings::default()).unwrap_err();
        assert!(err.to_string().contains("copy_parallelism"));
        let err = resolve(parse("verify_hold_seconds = 0"), Settings::default()).unwrap_err();
        assert!(err.to_string().contains("verify_hold_seconds"));
        let err = resolve(parse("listen = \"nowhere\""), Settings::default()).unwrap_err();
        assert!(err.to_string().contains("listen"));
        let err = resolve(
            parse("webhook_allowed_networks = [\"10.0.0.0/33\"]"),
            Settings::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("webhook_allowed_networks"));
        let config = resolve(
            parse("webhook_allowed_networks = [\"10.1.2.3/16\", \"::1\"]"),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(
            config.webhook_allowed_networks,
            ["10.1.0.0/16".parse().unwrap(), "::1/128".parse().unwrap()]
        );
        let err = resolve(
            parse("trusted_proxies = [\"proxy.internal\"]"),
            Settings::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_layered_and_none_by_default() {
        let config = resolve(Settings::default(), Settings::default()).unwrap();
        assert!(config.trusted_proxies.is_empty());
        let file = parse("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]");
        let config = resolve(file.clone(), Settings::default()).unwrap();
        assert_eq!(
            config.trusted_proxies,
            [
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        let over = Settings {
            trusted_proxies: Some(vec!["192.168.1.0/24".into()]),
            ..Default::default()
        };
        let config = resolve(file, over).unwrap();
        assert_eq!(config.trusted_proxies, ["192.168.1.0/24".parse().unwrap()]);
    }

    #[test]
    fn the_file_takes_every_knob_and_nothing_else() {
        let file = parse(
            "listen = \"0.0.0.0:1\"\ndata_dir = \"/d\"\nmetadata = \"postgresql://h/m\"\ncopy_parallelism = 3\ncopy_chunk_rows = 500",
        );
        let config = resolve(file, Settings::default()).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:1");
        assert_eq!(config.metadata.as_deref(), Some("postgresql://h/m"));
        assert_eq!(config.engine.copy_parallelism, 3);
        assert_eq!(config.engine.copy_chunk_rows, 500);
        let mut keys = Settings::keys();
        keys.sort();
        assert_eq!(
            keys,
            [
                "copy_chunk_rows",
                "copy_parallelism",
                "data_dir",
                "listen",
                "metadata",
                "pg_bin_dir",
                "trusted_proxies",
                "verify_hold_seconds",
                "webhook_allowed_networks"
            ]
        );
    }
}
