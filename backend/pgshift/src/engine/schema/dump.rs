//! Engine layer (target schema): running the PostgreSQL client tools that read a source's schema:
//! finding `pg_dump` and `pg_restore` (a configured directory, or the newest of the usual
//! PostgreSQL bin directories), checking that they are at least as new as the source, and
//! running them off the async runtime's threads (`tokio::process`). The password never appears
//! on a command line: it goes into a passfile readable by pgshift's user only (0600), in a
//! private directory (0700) removed when the dump is dropped.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::engine::{EngineError, EngineResult};

/// The PostgreSQL bin directories searched when no `pg_bin_dir` is configured.
const SEARCHED: &[&str] = &[
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
];

/// A `pg_dump` and the `pg_restore` beside it, with their major version.
#[derive(Debug, Clone)]
pub struct DumpTools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    /// The major version (`15` for 15.20).
    pub major: u32,
    /// `pg_dump --version`'s own words.
    pub version: String,
}

/// Where to connect `pg_dump`: libpq's URI without its password, and the password apart.
#[derive(Clone)]
pub struct DumpSource {
    uri: String,
    password: Option<String>,
}

impl std::fmt::Debug for DumpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpSource")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// The query parameters of a pgshift DSN that libpq understands too (sqlx's own spellings
/// translated); the others are pgshift's or sqlx's, and libpq would refuse them.
const LIBPQ_PARAMS: &[(&str, &str)] = &[
    ("sslmode", "sslmode"),
    ("ssl-mode", "sslmode"),
    ("sslrootcert", "sslrootcert"),
    ("ssl-root-cert", "sslrootcert"),
    ("sslcert", "sslcert"),
    ("ssl-cert", "sslcert"),
    ("sslkey", "sslkey"),
    ("ssl-key", "sslkey"),
    ("host", "host"),
    ("hostaddr", "hostaddr"),
    ("port", "port"),
    ("user", "user"),
    ("options", "options"),
    ("connect_timeout", "connect_timeout"),
];

impl DumpSource {
    /// From a cluster's DSN (`postgresql://user:password@host:port/db?…`) and the database.
    pub fn from_dsn(dsn: &str, database: &str) -> EngineResult<Self> {
        let bad = || {
            EngineError::InvalidDsn("expected postgresql://user:password@host:port/database".into())
        };
        let mut url = url::Url::parse(dsn).map_err(|_| bad())?;
        let mut password = url.password().map(percent_decode);
        url.set_password(None).map_err(|_| bad())?;
        let mut query = Vec::new();
        for (key, value) in url.query_pairs() {
            if key == "password" {
                password = Some(value.into_owned());
            } else if let Some((_, libpq)) = LIBPQ_PARAMS.iter().find(|(k, _)| *k == key) {
                query.push((libpq.to_string(), value.into_owned()));
            }
        }
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url.set_path(&format!("/{}", utf8_percent_encode(database)));
        Ok(Self {
            uri: url.to_string(),
            password,
        })
    }

    /// libpq's URI for the database, without the password.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn utf8_percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The major version in `pg_dump (PostgreSQL) 15.20 (Debian …)`.
pub fn parse_major(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    number.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

async fn tool_version(pg_dump: &Path) -> Option<(u32, String)> {
    let out = tokio::process::Command::new(pg_dump)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some((parse_major(&text)?, text))
}

/// Directories matching `pattern`, whose one `*` stands for one path component's part.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((head, tail)) = pattern.split_once('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let (dir, prefix) = head.rsplit_once('/').unwrap_or(("", head));
    let (suffix, rest) = match tail.split_once('/') {
        Some((s, r)) => (s, format!("/{r}")),
        None => (tail, String::new()),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "/" } else { dir }) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(prefix) && name.ends_with(suffix))
                .then(|| PathBuf::from(format!("{dir}/{name}{rest}")))
        })
        .collect()
}

/// The tools to use: those in `configured` (a directory holding `pg_dump` and `pg_restore`), or
/// else the newest found in the usual PostgreSQL bin directories and `PATH`. `None` when there
/// are none.
pub async fn find(configured: Option<&Path>) -> Option<DumpTools> {
    let dirs: Vec<PathBuf> = match configured {
        Some(dir) => vec![dir.to_path_buf()],
        None => {
            let mut dirs: Vec<PathBuf> = SEARCHED.iter().flat_map(|p| expand(p)).collect();
            if let Some(path) = std::env::var_os("PATH") {
                dirs.extend(std::env::split_paths(&path));
            }
            dirs
        }
    };
    let mut best: Option<DumpTools> = None;
    for dir in dirs {
        let (pg_dump, pg_restore) = (dir.join("pg_dump"), dir.join("pg_restore"));
        if !pg_dump.is_file() || !pg_restore.is_file() {
            continue;
        }
        let Some((major, version)) = tool_version(&pg_dump).await else {
            continue;
        };
        if best.as_ref().is_none_or(|b| major > b.major) {
            best = Some(DumpTools {
                pg_dump,
                pg_restore,
                major,
                version,
            });
        }
    }
    best
}

/// The tools, checked against the source's major version: `pg_dump` refuses a server newer than
/// itself, and only a client at least as new knows every object the source can hold.
pub async fn tools_for(configured: Option<&Path>, source_major: u32) -> EngineResult<DumpTools> {
    let where_ = match configured {
        Some(dir) => format!("in pg_bin_dir {}", dir.display()),
        None => format!(
            "in {} or PATH (set pg_bin_dir to choose another)",
            SEARCHED.join(", ")
        ),
    };
    let tools = find(configured).await.ok_or_else(|| {
        EngineError::invalid(
            "pg_dump_missing",
            format!("schema \"create\" reads the source's schema with pg_dump and pg_restore, and none were found {where_}; install the PostgreSQL {source_major} client (or newer), or create the tables on the target and use schema \"existing\""),
        )
    })?;
    if tools.major < source_major {
        return Err(EngineError::invalid(
            "pg_dump_too_old",
            format!(
                "the source runs PostgreSQL {source_major} but the newest pg_dump found is {} ({}, {where_}); pg_dump must be at least as new as the source: install the PostgreSQL {source_major} client",
                tools.major,
                tools.pg_dump.display()
            ),
        ));
    }
    Ok(tools)
}

/// A private directory holding a dump and its passfile, removed on drop.
pub struct DumpDir {
    path: PathBuf,
}

impl DumpDir {
    fn new() -> EngineResult<Self> {
        let path =
            std::env::temp_dir().join(format!("pgshift-schema-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| io_error("creating a private directory for the schema dump", e))?;
        Ok(Self { path })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for DumpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn io_error(what: &str, e: std::io::Error) -> EngineError {
    EngineError::invalid("schema_dump_failed", format!("{what}: {e}"))
}

/// Escapes a passfile field (`:` and `\`).
fn passfile_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// A schema-only dump of the source in pg_dump's custom format, in its own private directory.
pub struct SchemaDump {
    pub dir: DumpDir,
    pub tools: DumpTools,
}

impl SchemaDump {
    pub fn archive(&self) -> PathBuf {
        self.dir.file("schema.dump")
    }

    /// Runs `pg_dump --schema-only --format=custom` against `source`, leaving out the tables
    /// `excluded` names (pg_dump patterns, quoted) and pgshift's own schemas.
    pub async fn take(
        tools: &DumpTools,
        source: &DumpSource,
        excluded: &[String],
    ) -> EngineResult<Self> {
        let dir = DumpDir::new()?;
        let passfile = dir.file("passfile");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&passfile)
                .map_err(|e| io_error("writing the passfile for pg_dump", e))?;
            let password = source.password.as_deref().unwrap_or("");
            writeln!(f, "*:*:*:*:{}", passfile_field(password))
                .map_err(|e| io_error("writing the passfile for pg_dump", e))?;
        }
        let dump = Self {
            dir,
            tools: tools.clone(),
        };
        let mut cmd = tokio::process::Command::new(&tools.pg_dump);
        cmd.arg("--schema-only")
            .arg("--format=custom")
            .arg("--no-password")
            .arg(format!("--file={}", dump.archive().display()))
            .arg("--exclude-schema=pgshift_*")
            .args(excluded.iter().map(|t| format!("--exclude-table={t}")))
            .arg(format!("--dbname={}", source.uri));
        let out = run(cmd, &dump.dir, "pg_dump").await?;
        drop(out);
        Ok(dump)
    }

    /// `pg_restore --list`: the archive's table of contents.
    pub async fn list(&self) -> EngineResult<String> {
        let mut cmd = tokio::process::Command::new(&self.tools.pg_restore);
        cmd.arg("--list").arg(self.archive());
        run(cmd, &self.dir, "pg_restore --list").await
    }

    /// The SQL of the entries in `list` (lines of `pg_restore --list`), without owners or
    /// tablespaces (the target's role owns what pgshift builds).
    pub async fn sql(&self, list: &str, name: &str) -> EngineResult<String> {
        let list_file = self.dir.file(name);
        std::fs::write(&list_file, list)
            .map_err(|e| io_error("writing pg_restore's list of objects", e))?;
        let mut cmd = tokio::process::Command::new(&self.tools.pg_restore);
        cmd.arg("--no-owner")
            .arg("--no-tablespaces")
            .arg("--no-security-labels")
            .arg("--file=-")
            .arg(format!("--use-list={}", list_file.display()))
            .arg(self.archive());
        run(cmd, &self.dir, "pg_restore").await
    }
}

/// Runs a client tool with a clean libpq environment (the passfile in `dir`) and returns its
/// standard output; a failure names the tool and its own words.
async fn run(mut cmd: tokio::process::Command, dir: &DumpDir, what: &str) -> EngineResult<String> {
    for var in [
        "PGPASSWORD",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSFILE", dir.file("passfile"))
        .env("PGAPPNAME", "pgshift")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| io_error(&format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(EngineError::invalid(
            "schema_dump_failed",
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| {
        EngineError::invalid(
            "schema_dump_failed",
            format!("{what} wrote text that is not UTF-8"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18.6"), Some(18));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 19beta1"), Some(19));
        assert_eq!(parse_major("9.6.24"), Some(9));
    }

    #[test]
    fn the_password_leaves_the_uri() {
        let s = DumpSource::from_dsn(
            "postgresql://mig:s%3Acret@db.example:5433/postgres?sslmode=require&statement-cache-capacity=10",
            "shop floor",
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("s:cret"));
        assert!(!s.uri.contains("cret"), "{}", s.uri);
        assert_eq!(
            s.uri,
            "postgresql://mig@db.example:5433/shop%20floor?sslmode=require"
        );
        assert_eq!(passfile_field("a:b\\c"), "a\\:b\\\\c");
    }
}
