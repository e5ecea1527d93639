//! Service layer: lag, pending events and throughput of each migration over time, for the
//! dashboard's charts.
//!
//! Kept in memory, not in the metadata store: a sample every [`SAMPLE_EVERY`] for at most
//! [`RETENTION`] per migration (17,280 samples of 32 bytes, about 0.5 MiB per migration), dropped
//! when the migration is removed and lost on restart. The figures are live engine state that
//! only this process has (the ticker's lag), so a shared store would gain nothing a restart
//! would keep true; bounding it in memory keeps the metadata store free of a write every few
//! seconds per migration.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::App;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Copy-rate samples kept per table: one minute at [`SAMPLE_EVERY`].
const COPY_SAMPLES: usize = 12;

/// One observation of a running migration.
#[derive(Debug, Clone, Copy)]
pub struct LagSample {
    pub at: DateTime<Utc>,
    pub lag_seconds: f64,
    pub pending_events: i64,
    pub events_applied: i64,
}

#[derive(Default)]
struct MigrationHistory {
    samples: VecDeque<LagSample>,
    /// Per table: recent (time, rows copied), for copy-time estimates.
    copied: HashMap<String, VecDeque<(DateTime<Utc>, i64)>>,
}

#[derive(Default)]
pub struct LagHistory {
    migrations: Mutex<HashMap<Uuid, MigrationHistory>>,
}

/// A chart's points: lag and throughput (events applied per second) at each time.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LagSeries {
    /// Unix seconds.
    pub t: Vec<i64>,
    pub lag: Vec<f64>,
    pub pending: Vec<i64>,
    pub rate: Vec<f64>,
}

impl LagHistory {
    fn record(&self, id: Uuid, sample: LagSample, tables: &[(String, i64)]) {
        let mut all = self.migrations.lock().expect("lag history lock");
        let h = all.entry(id).or_default();
        h.samples.push_back(sample);
        let horizon = sample.at - chrono::Duration::from_std(RETENTION).expect("retention fits");
        while h.samples.front().is_some_and(|s| s.at < horizon) {
            h.samples.pop_front();
        }
        for (table, rows) in tables {
            let q = h.copied.entry(table.clone()).or_default();
            q.push_back((sample.at, *rows));
            while q.len() > COPY_SAMPLES {
                q.pop_front();
            }
        }
    }

    /// Forgets every migration not in `keep`.
    fn retain(&self, keep: &[Uuid]) {
        self.migrations
            .lock()
            .expect("lag history lock")
            .retain(|id, _| keep.contains(id));
    }

    /// The samples of the last `range`, at most `max_points` of them: each point is the
    /// bucket's highest lag and pending count, and its mean throughput.
    pub fn series(&self, id: Uuid, range: Duration, max_points: usize) -> LagSeries {
        let all = self.migrations.lock().expect("lag history lock");
        let Some(h) = all.get(&id) else {
            return LagSeries::default();
        };
        let since = Utc::now() - chrono::Duration::from_std(range).expect("range fits");
        let samples: Vec<&LagSample> = h.samples.iter().filter(|s| s.at >= since).collect();
        let per_bucket = samples.len().div_ceil(max_points.max(1)).max(1);
        let mut out = LagSeries::default();
        let mut prev: Option<&LagSample> = None;
        for bucket in samples.chunks(per_bucket) {
            let first = prev.unwrap_or(bucket[0]);
            let last = bucket[bucket.len() - 1];
            let secs = (last.at - first.at).num_milliseconds() as f64 / 1000.0;
            let rate = if secs > 0.0 {
                ((last.events_applied - first.events_applied).max(0) as f64) / secs
            } else {
                0.0
            };
            out.t.push(last.at.timestamp());
            out.lag
                .push(bucket.iter().map(|s| s.lag_seconds).fold(0.0, f64::max));
            out.pending
                .push(bucket.iter().map(|s| s.pending_events).max().unwrap_or(0));
            out.rate.push((rate * 10.0).round() / 10.0);
            prev = Some(last);
        }
        out
    }

    /// Rows per second a table was copied at over the last minute, if it moved.
    pub fn copy_rate(&self, id: Uuid, table: &str) -> Option<f64> {
        let all = self.migrations.lock().expect("lag history lock");
        let q = all.get(&id)?.copied.get(table)?;
        let (first, last) = (q.front()?, q.back()?);
        let secs = (last.0 - first.0).num_milliseconds() as f64 / 1000.0;
        let rows = last.1 - first.1;
        (secs > 0.0 && rows > 0).then(|| rows as f64 / secs)
    }
}

/// Samples every running migration each [`SAMPLE_EVERY`] until `cancel` fires (a background
/// task the application starts).
pub async fn run_sampler(app: Arc<App>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(SAMPLE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => sample(&app).await,
        }
    }
}

async fn sample(app: &App) {
    let records = match app.store.list_migrations().await {
        Ok(r) => r,
        Err(err) => {
            tracing::debug!(error = %err, "lag sampler cannot list migrations");
            return;
        }
    };
    let now = Utc::now();
    for record in &records {
        let Some(status) = app.supervisor.status(record.id) else {
            continue;
        };
        let tables: Vec<(String, i64)> = status
            .tables
            .iter()
            .filter(|t| t.state == "copying")
            .map(|t| (t.name.clone(), t.rows_copied))
            .collect();
        app.lag_history.record(
            record.id,
            LagSample {
                at: now,
                lag_seconds: status.lag_seconds.unwrap_or(0.0),
                pending_events: status.pending_events.unwrap_or(0),
                events_applied: status.events_applied.unwrap_or(0),
            },
            &tables,
        );
    }
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    app.lag_history.retain(&ids);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_buckets_and_rates() {
        let h = LagHistory::default();
        let id = Uuid::new_v4();
        let start = Utc::now() - chrono::Duration::seconds(100);
        for i in 0..20 {
            h.record(
                id,
                LagSample {
                    at: start + chrono::Duration::seconds(5 * i),
                    lag_seconds: i as f64,
                    pending_events: i,
                    events_applied: 100 * i,
                },
                &[("public.t".into(), 1000 * i)],
            );
        }
        let s = h.series(id, Duration::from_secs(3600), 5);
        assert_eq!(s.t.len(), 5);
        assert_eq!(s.lag[4], 19.0);
        // 100 events per 5 s.
        assert!(
            s.rate[1..].iter().all(|r| (*r - 20.0).abs() < 0.01),
            "{:?}",
            s.rate
        );
        let rate = h.copy_rate(id, "public.t").unwrap();
        assert!((rate - 200.0).abs() < 0.01, "{rate}");
        h.retain(&[]);
        assert!(h.series(id, Duration::from_secs(3600), 5).t.is_empty());
    }
}
