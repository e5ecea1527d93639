//! Service layer: the audit trail. The API's middleware and the dashboard's actions record their
//! entries through here, and the API lists them through here; neither front end writes the store
//! itself. The trail holds what authenticated callers did: requests refused for want of a valid
//! token are counted ([`Unauthenticated`]), not stored one by one, and every name is cut to
//! [`MAX_NAME_LEN`] before it is written. Also who the client is: the address both front ends
//! put in entries and the sign-in throttle counts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{App, ServiceResult};
use crate::store::{AuditEntry, AuditFilter, NewAuditEntry};

/// Entries returned when no limit is given, and the most ever returned.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// The most bytes of a name (the object's, the actor's) an entry keeps. Valid cluster and
/// migration names have at most 63 characters and ids 36; a longer name, which comes from a
/// request's path, is cut here and ends in `…`.
pub const MAX_NAME_LEN: usize = 128;

/// `name`, or its first [`MAX_NAME_LEN`] bytes (at a character boundary) followed by `…`.
pub fn bounded_name(name: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name.to_string();
    }
    let mut end = MAX_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// Records one entry, its names cut to [`MAX_NAME_LEN`]. A failure to record is logged and
/// never fails the action it describes.
pub async fn record(app: &App, entry: &NewAuditEntry) {
    let too_long = |n: &str| n.len() > MAX_NAME_LEN;
    let bounded;
    let entry = if too_long(&entry.actor) || entry.object_name.as_deref().is_some_and(too_long) {
        bounded = NewAuditEntry {
            actor: bounded_name(&entry.actor),
            object_name: entry.object_name.as_deref().map(bounded_name),
            ..entry.clone()
        };
        &bounded
    } else {
        entry
    };
    if let Err(err) = app.store.insert_audit(entry).await {
        // No request detail here: only why the store refused.
        tracing::warn!(error = %err, "cannot record an audit entry");
    }
}

/// API requests refused for want of a valid token (no token, a malformed, expired, revoked or
/// foreign one). Anyone who reaches the port can send them, so they are not stored one by one:
/// they are counted (`pgshift_http_unauthenticated_refusals_total` on `/metrics`) and logged at
/// most once per [`Self::LOG_EVERY`], with how many came since the last line.
#[derive(Default)]
pub struct Unauthenticated {
    total: AtomicU64,
    log: Mutex<RefusalLog>,
}

/// Refusals not yet logged, and when the last line was.
#[derive(Default)]
struct RefusalLog {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Counts one refusal at `now`; the number to log when a line is due.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < Unauthenticated::LOG_EVERY)
        {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Unauthenticated {
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(60);

    /// Counts one refused request (`route` is its route pattern, never the raw path).
    pub fn refused(&self, route: &str, client: Option<IpAddr>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let due = self
            .log
            .lock()
            .expect("refusal log lock")
            .count(Instant::now());
        if let Some(refused) = due {
            let client = client.map(|ip| ip.to_string());
            tracing::warn!(
                refused,
                last_route = route,
                last_client = client.as_deref().unwrap_or("unknown"),
                "API requests refused without a valid token since the last such line (counted in pgshift_http_unauthenticated_refusals_total, not in the audit trail)"
            );
        }
    }

    /// Refusals since the process started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Entries about the migration or cluster (either, both or neither), newest first.
pub async fn list(
    app: &App,
    migration: Option<String>,
    cluster: Option<String>,
    limit: Option<u32>,
) -> ServiceResult<Vec<AuditEntry>> {
    let filter = AuditFilter {
        migration,
        cluster,
        limit: limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT),
    };
    Ok(app.store.list_audit(&filter).await?)
}

/// The client's address: the peer's, except that a peer on this machine (a local reverse proxy)
/// may name the client in `X-Forwarded-For`. A remote peer's header is ignored, so a client
/// cannot pose as another address.
pub fn client_addr(peer: Option<SocketAddr>, headers: &axum::http::HeaderMap) -> Option<IpAddr> {
    let forwarded = || -> Option<IpAddr> {
        let header = headers.get("x-forwarded-for")?.to_str().ok()?;
        header.split(',').next()?.trim().parse().ok()
    };
    match peer {
        Some(addr) if !addr.ip().is_loopback() => Some(addr.ip()),
        Some(addr) => forwarded().or(Some(addr.ip())),
        // No peer address (requests handed to the router directly): the header is all there is.
        None => forwarded(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_name("m1"), "m1");
        let exact = "a".repeat(MAX_NAME_LEN);
        assert_eq!(bounded_name(&exact), exact);
        let long = "é".repeat(MAX_NAME_LEN);
        let cut = bounded_name(&long);
        assert!(cut.len() <= MAX_NAME_LEN + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_period() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.count(start), Some(1), "the first refusal is logged");
        for i in 1..100 {
            assert_eq!(log.count(start + Duration::from_millis(i)), None);
        }
        let later = start + Unauthenticated::LOG_EVERY;
        assert_eq!(
            log.count(later),
            Some(100),
            "the next line says how many came"
        );
        assert_eq!(log.count(later + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_remote_peer_cannot_pose_as_another_address() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
        let remote: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            client_addr(Some(remote), &headers),
            Some(remote.ip()),
            "a remote peer's header is ignored"
        );
        assert_eq!(
            client_addr(Some(local), &headers),
            "203.0.113.9".parse().ok(),
            "a local proxy names the client"
        );
        let empty = axum::http::HeaderMap::new();
        assert_eq!(client_addr(Some(local), &empty), Some(local.ip()));
        assert_eq!(client_addr(None, &empty), None);
    }
}
