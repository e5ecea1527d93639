//! Londiste3 set up the way its tutorial does: a root node on the source and a leaf node on the
//! target (`create-root`, `create-leaf`), a `londiste worker` daemon for each, the `pgqd`
//! ticker, then `add-table --all` on the root and on the leaf. Every setting is the default
//! except the paths (logs and pid files in the pair's work directory) and pgqd's database list.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{copy_sequences, run, Cutover, Pair};
use crate::common::{Ctx, R};
use crate::procs;

const QUEUE: &str = "replika";

pub struct Londiste {
    dir: PathBuf,
    root_ini: String,
    leaf_ini: String,
    /// Pids of the running daemons: root worker, leaf worker, pgqd (from their pid files).
    pids: Vec<u32>,
    /// pgqd's pid (also in `pids`): it stops on SIGTERM, the workers through `londiste -s`.
    pgqd: Option<u32>,
}

impl Londiste {
    pub async fn start(pair: &Pair) -> R<Londiste> {
        let dir = pair.work.join("londiste");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let node_ini = |job: &str, conninfo: &str| {
            format!(
                "[londiste]\njob_name = {job}\ndb = {conninfo}\nqueue_name = {QUEUE}\n\
                 logfile = {d}/{job}.log\npidfile = {d}/{job}.pid\n",
                d = dir.display()
            )
        };
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).ctx(|| format!("writing {}", p.display()))
        };
        write("root.ini", node_ini("root_worker", &pair.source_conninfo()))?;
        write("leaf.ini", node_ini("leaf_worker", &pair.target_conninfo()))?;
        write(
            "pgqd.ini",
            format!(
                "[pgqd]\nbase_connstr = host=127.0.0.1 port={} user=postgres\n\
                 database_list = {}\nlogfile = {d}/pgqd.log\npidfile = {d}/pgqd.pid\n",
                pair.source_port,
                pair.db,
                d = dir.display()
            ),
        )?;
        let mut t = Londiste {
            root_ini: dir.join("root.ini").display().to_string(),
            leaf_ini: dir.join("leaf.ini").display().to_string(),
            dir,
            pids: Vec::new(),
            pgqd: None,
        };
        let source = pair.source_conninfo();
        let provider = format!("--provider={source}");
        t.londiste(&[&t.root_ini.clone(), "create-root", "node1", &source])
            .await?;
        // Each daemon's pid is recorded as soon as it runs, so that Drop stops it if a later
        // step fails.
        t.londiste(&["-d", &t.root_ini.clone(), "worker"]).await?;
        let pid = t.wait_pid("root_worker").await?;
        t.pids.push(pid);
        t.londiste(&[
            &t.leaf_ini.clone(),
            "create-leaf",
            "node2",
            &pair.target_conninfo(),
            &provider,
        ])
        .await?;
        t.londiste(&["-d", &t.leaf_ini.clone(), "worker"]).await?;
        let pid = t.wait_pid("leaf_worker").await?;
        t.pids.push(pid);
        run("pgqd", &["-d", "pgqd.ini"], &t.dir).await?;
        let pid = t.wait_pid("pgqd").await?;
        t.pids.push(pid);
        t.pgqd = Some(pid);
        t.londiste(&[&t.root_ini.clone(), "add-table", "--all"])
            .await?;
        t.londiste(&[&t.leaf_ini.clone(), "add-table", "--all"])
            .await?;
        Ok(t)
    }

    async fn londiste(&self, args: &[&str]) -> R<String> {
        run("londiste", args, &self.dir)
            .await
            .map_err(|e| format!("{e}\n(logs in {})", self.dir.display()))
    }

    /// The pid a daemon wrote to its pid file (it writes it after forking).
    async fn wait_pid(&self, job: &str) -> R<u32> {
        let path = self.dir.join(format!("{job}.pid"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|p| procs::alive(*p))
            {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{job} did not start: no live pid in {} after 30 s (logs in {})",
                    path.display(),
                    self.dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every table on the leaf has merge state `ok` (what `londiste wait-sync` waits for).
    pub async fn copy_done(&self, pair: &Pair) -> R<bool> {
        let (total, ok): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE merge_state = 'ok')
               FROM londiste.table_info WHERE queue_name = $1 AND local",
        )
        .bind(QUEUE)
        .fetch_one(&pair.dst)
        .await
        .ctx(|| "reading londiste.table_info on the target".into())?;
        let dead = self.pids.iter().find(|p| !procs::alive(**p));
        if let Some(p) = dead {
            return Err(format!(
                "a Londiste daemon (pid {p}) died; logs in {}",
                self.dir.display()
            ));
        }
        Ok(total > 0 && ok == total)
    }

    pub fn processes(&self) -> Vec<u32> {
        self.pids.clone()
    }

    /// The manual switch of a leaf to primary: with writes blocked, `londiste wait-root`
    /// until the leaf has processed the root's last tick, copy the sequences, stop the
    /// workers and the ticker.
    pub async fn cutover(&mut self, pair: &Pair) -> R<Cutover> {
        let mut steps = Vec::new();
        let t = Instant::now();
        self.londiste(&[&self.leaf_ini.clone(), "wait-root"])
            .await?;
        steps.push(("`londiste leaf.ini wait-root`".to_string(), t.elapsed()));
        let t = Instant::now();
        let n = copy_sequences(pair).await?;
        steps.push((format!("copy {n} sequence values (`setval`)"), t.elapsed()));
        let t = Instant::now();
        self.stop_daemons().await?;
        steps.push((
            "stop both workers (`londiste -s`) and pgqd".to_string(),
            t.elapsed(),
        ));
        Ok(Cutover {
            steps,
            procedure: "Londiste3 has no switchover for a leaf: block writes, `londiste leaf.ini wait-root` \
                        (the leaf has applied the root's latest tick; pgqd ticks every second), copy sequence \
                        values, stop the workers and pgqd."
                .into(),
            writes_blocked: None,
        })
    }

    async fn stop_daemons(&mut self) -> R<()> {
        if self.pids.is_empty() {
            return Ok(());
        }
        for ini in [self.root_ini.clone(), self.leaf_ini.clone()] {
            // `-s` sends SIGINT through the pid file: the worker finishes its batch and exits.
            let _ = self.londiste(&["-s", &ini]).await;
        }
        if let Some(pgqd) = self.pgqd.take() {
            procs::signal(pgqd, "TERM");
        }
        let killed = procs::wait_gone(&self.pids, Duration::from_secs(30)).await;
        self.pids.clear();
        if killed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "Londiste processes {killed:?} did not stop within 30 s and were killed"
            ))
        }
    }

    /// Stops the daemons; the benchmark drops both databases afterwards, which removes the
    /// PgQ and Londiste schemas with them.
    pub async fn stop(mut self) -> R<()> {
        self.stop_daemons().await
    }

    pub fn log_hint(&self) -> String {
        format!("Londiste and pgqd logs in {}", self.dir.display())
    }
}

impl Drop for Londiste {
    /// An interrupted run leaves no daemon behind.
    fn drop(&mut self) {
        for p in &self.pids {
            procs::signal(*p, "KILL");
        }
    }
}
