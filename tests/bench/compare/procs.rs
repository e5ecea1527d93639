//! Memory of the replicating processes, whatever they are: the pgshift server, Londiste's
//! workers and pgqd (with the copy processes they fork), or PostgreSQL's walsender and apply
//! worker backends. Sampled from /proc every 100 ms.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Resident memory of a set of processes at one instant, summed.
#[derive(Clone, Copy, Default, Debug)]
pub struct Memory {
    /// VmRSS: everything resident, shared memory included (for a PostgreSQL backend, the
    /// pages of shared_buffers it touched).
    pub rss: u64,
    /// RssAnon: the processes' own heap and stacks, the memory they would need on their own.
    pub anon: u64,
}

impl Memory {
    fn max(self, o: Memory) -> Memory {
        Memory {
            rss: self.rss.max(o.rss),
            anon: self.anon.max(o.anon),
        }
    }
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kb: u64 = v
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and every live descendant of them.
pub fn with_descendants(roots: &[u32]) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = roots.iter().copied().collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return set;
    };
    let all: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    loop {
        let before = set.len();
        for (pid, ppid) in &all {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// The memory of `roots` and their descendants now.
pub fn memory(roots: &[u32]) -> Memory {
    with_descendants(roots)
        .into_iter()
        .fold(Memory::default(), |m, pid| Memory {
            rss: m.rss + status_kb(pid, "VmRSS").unwrap_or(0),
            anon: m.anon + status_kb(pid, "RssAnon").unwrap_or(0),
        })
}

/// The highest summed memory of `roots` (and descendants) seen every 100 ms until `stop`.
pub fn spawn_peak_sampler(roots: Vec<u32>, stop: CancellationToken) -> JoinHandle<Memory> {
    tokio::spawn(async move {
        let mut peak = Memory::default();
        loop {
            let r = roots.clone();
            let now = tokio::task::spawn_blocking(move || memory(&r))
                .await
                .unwrap_or_default();
            peak = peak.max(now);
            tokio::select! {
                _ = stop.cancelled() => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
}

/// Whether a process is still running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Sends `signal` (a `kill -s` name) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Waits up to `timeout` for every pid to exit; then SIGKILLs the stragglers.
pub async fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return left;
        }
        if tokio::time::Instant::now() > deadline {
            for p in &left {
                signal(*p, "KILL");
            }
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_children() {
        let me = std::process::id();
        let m = memory(&[me]);
        assert!(m.rss > 0 && m.anon > 0 && m.anon <= m.rss, "{m:?}");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(with_descendants(&[me]).contains(&child.id()));
        assert!(alive(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(child.id()));
    }
}
