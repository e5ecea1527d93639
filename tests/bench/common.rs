//! Small helpers of the benchmark: errors, progress lines, external PostgreSQL tools, facts
//! about the machine and this process's memory, and statistics.

use std::fmt::Display;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgshift_tests::DEFAULT_PG_BIN;

/// Every fallible step of the benchmark reports a readable message.
pub type R<T> = Result<T, String>;

pub trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// When the benchmark started (the first call).
pub fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A progress line on stderr, prefixed with the time since the start.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[bench {:>7.1}s] {}", $crate::common::started().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

/// Seconds with millisecond precision, for reports.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

/// A PostgreSQL client program of the same version as the servers.
pub fn pg_tool(name: &str) -> PathBuf {
    let dirs = [
        std::env::var_os("PGSHIFT_TEST_PG_BIN").map(PathBuf::from),
        Some(PathBuf::from(DEFAULT_PG_BIN)),
    ];
    dirs.into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `tool -h 127.0.0.1 -p PORT -U postgres`, with no PG* environment leaking in.
pub fn pg_command(tool: &str, port: u16) -> Command {
    let mut cmd = Command::new(pg_tool(tool));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .env_remove("PGDATABASE")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .env_remove("PGPASSWORD")
        .env_remove("PGOPTIONS")
        .env("PGCONNECT_TIMEOUT", "30")
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

/// Runs `cmd` to the end off the async runtime; its stdout, or an error with its stderr.
pub async fn run(mut cmd: Command) -> R<String> {
    tokio::task::spawn_blocking(move || {
        let what = describe(&cmd);
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .ctx(|| format!("could not run `{what}`"))?;
        if !out.status.success() {
            return Err(format!(
                "`{what}` failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .ctx(|| "a blocking task failed".into())?
}

/// Runs `a | b` to the end off the async runtime; fails unless both succeed.
pub async fn pipe(mut a: Command, mut b: Command) -> R<()> {
    tokio::task::spawn_blocking(move || {
        let (what_a, what_b) = (describe(&a), describe(&b));
        let mut first = a
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("could not run `{what_a}`"))?;
        let stdout = first.stdout.take().expect("piped stdout");
        let mut stderr_a = first.stderr.take().expect("piped stderr");
        // Drained on its own thread so that a chatty `a` never blocks on a full pipe.
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_a.read_to_string(&mut s);
            s
        });
        let second = b
            .stdin(Stdio::from(stdout))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let second = match second {
            Ok(c) => c,
            Err(e) => {
                let _ = first.kill();
                let _ = first.wait();
                return Err(format!("could not run `{what_b}`: {e}"));
            }
        };
        let out_b = second
            .wait_with_output()
            .ctx(|| format!("waiting for `{what_b}`"))?;
        let status_a = first.wait().ctx(|| format!("waiting for `{what_a}`"))?;
        let err_a = drain.join().unwrap_or_default();
        let mut problems = Vec::new();
        if !status_a.success() {
            problems.push(format!("`{what_a}` failed ({status_a}):\n{}", err_a.trim()));
        }
        if !out_b.status.success() {
            problems.push(format!(
                "`{what_b}` failed ({}):\n{}",
                out_b.status,
                String::from_utf8_lossy(&out_b.stderr).trim()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    })
    .await
    .ctx(|| "a blocking task failed".into())?
}

// ---------------------------------------------------------------------------
// The machine and this process
// ---------------------------------------------------------------------------

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A `kB` value of /proc/self/status, in bytes.
fn status_kb(key: &str) -> Option<u64> {
    let v = proc_field("/proc/self/status", key)?;
    let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident set size of this process, in bytes.
pub fn rss() -> u64 {
    status_kb("VmRSS").unwrap_or(0)
}

/// Peak resident set size of this process (since start or the last [`reset_peak_rss`]).
pub fn peak_rss() -> u64 {
    status_kb("VmHWM").unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false if the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub load: String,
}

pub fn machine() -> Machine {
    let memory = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        load: load_average(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The workspace's root directory (where `cargo run` is meant to be started).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `git describe --always --dirty` of the workspace, if git answers.
pub fn git_version() -> String {
    Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------
// CPU time
// ---------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime, stime, cutime, cstime of a process, in seconds.
fn cpu_times(pid: &str) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14.
    let get = |i: usize| f.get(i)?.parse::<f64>().ok().map(|v| v / clock_ticks());
    Some([get(11)?, get(12)?, get(13)?, get(14)?])
}

/// CPU seconds used by this process (all its threads: pgshift and the benchmark), and by its
/// children that it has waited for (pgbench, pg_dump, ...).
pub fn own_cpu() -> (f64, f64) {
    cpu_times("self").map_or((0.0, 0.0), |t| (t[0] + t[1], t[2] + t[3]))
}

/// CPU seconds used by a PostgreSQL cluster: every live process whose working directory is its
/// data directory, plus what the postmaster's exited children used.
pub fn cluster_cpu(data_dir: &Path, postmaster: Option<u32>) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == data_dir) {
            if let Some(t) = cpu_times(pid) {
                total += t[0] + t[1];
                if Some(pid) == postmaster.map(|p| p.to_string()).as_deref() {
                    total += t[2] + t[3];
                }
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Nearest-rank percentiles of a sample.
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Some(Self {
            count: v.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        })
    }
}

/// Quotes an argument for a shell command line, only when needed.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Walks `--flag value` / `--flag=value` arguments, handing each flag and a way to take its
/// value to `apply`; `-h`/`--help` returns `usage` as the error. Both benchmarks parse this way.
pub fn each_flag(
    raw: &[String],
    usage: &str,
    mut apply: impl FnMut(&str, &mut dyn FnMut() -> R<String>) -> R<()>,
) -> R<()> {
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if matches!(key, "-h" | "--help") {
            return Err(usage.into());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{key} needs a value\n\n{usage}"))
        };
        apply(key, &mut value)?;
    }
    Ok(())
}

/// A flag's value as a positive integer.
pub fn positive(key: &str, v: String) -> R<u32> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{key}: expected a positive integer, got {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max, p.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        let one = Percentiles::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn quoting_for_the_shell() {
        assert_eq!(shell_quote("--scale"), "--scale");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
