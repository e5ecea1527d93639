//! PostgreSQL's native logical replication: `CREATE PUBLICATION … FOR ALL TABLES` on the
//! source, `CREATE SUBSCRIPTION` on the target (which copies the tables, then streams changes
//! decoded from the WAL). Needs `wal_level = logical` on the source, a restart; and a superuser
//! for FOR ALL TABLES and for the subscription.

use std::time::{Duration, Instant};

use super::{copy_sequences, Cutover, Pair};
use crate::common::{Ctx, R};

const PUBLICATION: &str = "bench_pub";
const SUBSCRIPTION: &str = "bench_sub";

pub struct Native {
    subscribed: bool,
}

impl Native {
    pub async fn start(pair: &Pair) -> R<Native> {
        sqlx::raw_sql(&format!("CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES"))
            .execute(&pair.src)
            .await
            .ctx(|| "CREATE PUBLICATION on the source".into())?;
        // CREATE SUBSCRIPTION cannot run in a transaction block: raw_sql sends it alone.
        sqlx::raw_sql(&format!(
            "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION '{}' PUBLICATION {PUBLICATION}",
            pair.source_conninfo()
        ))
        .execute(&pair.dst)
        .await
        .ctx(|| "CREATE SUBSCRIPTION on the target".into())?;
        Ok(Native { subscribed: true })
    }

    /// Every table of the subscription is `r` (ready) in pg_subscription_rel.
    pub async fn copy_done(&self, pair: &Pair) -> R<bool> {
        let (total, ready): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE r.srsubstate = 'r')
               FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
              WHERE s.subname = $1",
        )
        .bind(SUBSCRIPTION)
        .fetch_one(&pair.dst)
        .await
        .ctx(|| "reading pg_subscription_rel".into())?;
        Ok(total > 0 && ready == total)
    }

    /// The walsender(s) serving the subscription on the source and its apply worker on the
    /// target (table sync workers too while they run).
    pub async fn processes(&self, pair: &Pair) -> R<Vec<u32>> {
        let mut pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_replication WHERE application_name LIKE $1 || '%'
                OR application_name LIKE 'pg\\_%\\_sync\\_%'",
        )
        .bind(SUBSCRIPTION)
        .fetch_all(&pair.src)
        .await
        .ctx(|| "reading pg_stat_replication".into())?;
        let apply: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
        )
        .bind(SUBSCRIPTION)
        .fetch_all(&pair.dst)
        .await
        .ctx(|| "reading pg_stat_subscription".into())?;
        pids.extend(apply);
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    /// The documented way off a publisher: with writes blocked, wait until the subscriber has
    /// confirmed the publisher's current WAL position, copy the sequences (logical
    /// replication does not carry them), drop the subscription.
    pub async fn cutover(&mut self, pair: &Pair) -> R<Cutover> {
        let mut steps = Vec::new();
        let t = Instant::now();
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&pair.src)
            .await
            .ctx(|| "pg_current_wal_lsn()".into())?;
        loop {
            let caught_up: Option<bool> = sqlx::query_scalar(
                "SELECT bool_and(replay_lsn >= $1::pg_lsn) FROM pg_stat_replication
                  WHERE application_name = $2",
            )
            .bind(&lsn)
            .bind(SUBSCRIPTION)
            .fetch_one(&pair.src)
            .await
            .ctx(|| "reading pg_stat_replication".into())?;
            if caught_up == Some(true) {
                break;
            }
            if t.elapsed() > Duration::from_secs(300) {
                return Err(format!("the subscriber did not confirm {lsn} within 300 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        steps.push((
            "wait until `pg_stat_replication.replay_lsn` ≥ the source's `pg_current_wal_lsn()`"
                .to_string(),
            t.elapsed(),
        ));
        let t = Instant::now();
        let n = copy_sequences(pair).await?;
        steps.push((format!("copy {n} sequence values (`setval`)"), t.elapsed()));
        let t = Instant::now();
        self.drop_subscription(pair).await?;
        steps.push(("`DROP SUBSCRIPTION`".to_string(), t.elapsed()));
        Ok(Cutover {
            steps,
            procedure:
                "Block writes, wait until the subscriber has confirmed the publisher's current WAL \
                        position (`pg_stat_replication.replay_lsn`), copy sequence values (logical \
                        replication does not replicate sequences), `DROP SUBSCRIPTION`."
                    .into(),
            writes_blocked: None,
        })
    }

    async fn drop_subscription(&mut self, pair: &Pair) -> R<()> {
        if self.subscribed {
            sqlx::raw_sql(&format!("DROP SUBSCRIPTION {SUBSCRIPTION}"))
                .execute(&pair.dst)
                .await
                .ctx(|| "DROP SUBSCRIPTION on the target".into())?;
            self.subscribed = false;
        }
        Ok(())
    }

    /// Drops the subscription (and with it the replication slot on the source) and the
    /// publication.
    pub async fn stop(mut self, pair: &Pair) -> R<()> {
        self.drop_subscription(pair).await?;
        sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"))
            .execute(&pair.src)
            .await
            .ctx(|| "DROP PUBLICATION on the source".into())?;
        Ok(())
    }
}
