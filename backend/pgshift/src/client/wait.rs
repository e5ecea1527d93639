//! Command-line layer (the API client): `pgshift migration wait`: polls a migration until it
//! reaches the goal or the deadline passes. A server that restarts or briefly fails meanwhile is
//! asked again; a missing migration or a refused token ends the wait at once.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{Api, ClientError};
use super::migrations::{lag, tables_synced};
use super::text;

/// What to wait for; at least one condition.
pub struct Goal {
    synced: bool,
    lag_below: Option<Duration>,
}

impl Goal {
    pub fn new(synced: bool, lag_below: Option<Duration>) -> Result<Self, ClientError> {
        if !synced && lag_below.is_none() {
            return Err(ClientError::Usage(
                "migration wait needs --synced, --lag-below DURATION or both".into(),
            ));
        }
        Ok(Self { synced, lag_below })
    }

    fn reached(&self, migration: &Value) -> bool {
        let synced = !self.synced || migration["state"] == "synced";
        let lag_ok = match self.lag_below {
            None => true,
            Some(limit) => migration["lag_seconds"]
                .as_f64()
                .is_some_and(|l| l < limit.as_secs_f64()),
        };
        synced && lag_ok
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.synced, self.lag_below) {
            (true, Some(l)) => write!(f, "synced with lag below {}", seconds(l)),
            (true, None) => f.write_str("synced"),
            (false, Some(l)) => write!(f, "lagging less than {}", seconds(l)),
            (false, None) => f.write_str("anything"),
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Polls `path` every `interval` until `goal` holds (returns the migration) or `timeout` passes.
pub async fn until(
    api: &Api,
    path: &str,
    name: &str,
    goal: &Goal,
    timeout: Duration,
    interval: Duration,
) -> Result<Value, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut last_seen: Option<Value> = None;
    let mut last_error: Option<ClientError> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // One request may not outlive the deadline.
        match tokio::time::timeout(remaining, api.get(path)).await {
            Ok(Ok(migration)) => {
                if goal.reached(&migration) {
                    return Ok(migration);
                }
                last_seen = Some(migration);
                last_error = None;
            }
            Ok(Err(e)) if e.is_transient() => last_error = Some(e),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClientError::Timeout(reason(
                name, goal, timeout, last_seen, last_error,
            )));
        }
        tokio::time::sleep(interval.min(remaining)).await;
    }
}

/// The one-line reason a wait timed out: the goal and where the migration stood.
fn reason(
    name: &str,
    goal: &Goal,
    timeout: Duration,
    seen: Option<Value>,
    error: Option<ClientError>,
) -> String {
    let mut text_out = format!(
        "timed out after {} waiting for migration {name} to be {goal}",
        seconds(timeout)
    );
    if let Some(m) = seen {
        text_out.push_str(&format!(
            ": state {}, lag {}, {} tables synced",
            text(&m, "state"),
            lag(&m),
            tables_synced(&m)
        ));
        if !m["error"].is_null() {
            text_out.push_str(&format!(", last error: {}", text(&m, "error")));
        }
    }
    if let Some(e) = error {
        text_out.push_str(&format!("; last request failed: {e}"));
    }
    text_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn goals() {
        assert!(Goal::new(false, None).is_err());
        let synced = Goal::new(true, None).unwrap();
        let lag = Goal::new(false, Some(Duration::from_secs(2))).unwrap();
        let both = Goal::new(true, Some(Duration::from_secs(2))).unwrap();
        let copying = json!({"state": "copying", "lag_seconds": 0.5});
        let synced_lagging = json!({"state": "synced", "lag_seconds": 3.0});
        let synced_unknown_lag = json!({"state": "synced", "lag_seconds": null});
        let done = json!({"state": "synced", "lag_seconds": 0.1});
        assert!(!synced.reached(&copying) && synced.reached(&synced_lagging));
        assert!(lag.reached(&copying) && !lag.reached(&synced_lagging));
        assert!(
            !lag.reached(&synced_unknown_lag),
            "an unknown lag is not a low one"
        );
        assert!(!both.reached(&copying) && !both.reached(&synced_lagging) && both.reached(&done));
        assert_eq!(both.to_string(), "synced with lag below 2s");
    }
}
