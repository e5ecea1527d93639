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

/// The reverse proxies whose `X-Forwarded-For` is believed (the `trusted_proxies` setting), and
/// so who the client is: the address both front ends put in entries and the sign-in throttle
/// counts.
///
/// Proxies append the address they received the request from to the header (nginx's
/// `$proxy_add_x_forwarded_for`), after whatever the client sent: only the entries on the right,
/// added by proxies we trust, are facts. So the client is the peer unless the peer is a trusted
/// proxy; then the header is walked from the right, past trusted proxies, and the first address
/// that is not one is the client. Without trusted proxies (the default) no header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<ipnet::IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address, given the connection's peer (none when a request is handed to the
    /// router directly, then no address is known) and the request's headers.
    pub fn client_addr(
        &self,
        peer: Option<SocketAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Option<IpAddr> {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
        let peer = peer?.ip().to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        // Several header lines make one list, in order; walked from the right.
        let mut nearest = peer;
        for line in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(line) = line.to_str() else {
                return Some(nearest);
            };
            for hop in line.rsplit(',') {
                // Not an address: nothing to its left can be told apart from what the client
                // wrote, so the request is the nearest trusted hop's.
                let Some(ip) = forwarded_hop(hop) else {
                    return Some(nearest);
                };
                if !self.trusts(ip) {
                    return Some(ip);
                }
                nearest = ip;
            }
        }
        // Only trusted proxies: the farthest of them sent it.
        Some(nearest)
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:443`) or in brackets.
fn forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(hop)
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
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

    fn forwarded(value: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let none = TrustedProxies::default();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let remote: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let headers = forwarded("203.0.113.9");
        assert_eq!(none.client_addr(Some(local), &headers), ip("127.0.0.1"));
        assert_eq!(none.client_addr(Some(remote), &headers), ip("198.51.100.7"));
        assert_eq!(none.client_addr(None, &headers), None);
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let proxies = TrustedProxies::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let other: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let cases = [
            ("203.0.113.9", ip("203.0.113.9")),
            ("203.0.113.9, 198.51.100.20", ip("198.51.100.20")),
            ("203.0.113.9, 198.51.100.20, 10.1.2.3", ip("198.51.100.20")),
            ("1.2.3.4,127.0.0.1 ,198.51.100.20", ip("198.51.100.20")),
            ("198.51.100.20:4711", ip("198.51.100.20")),
            ("[2001:db8::7]:443, fd00::1", ip("2001:db8::7")),
            ("[2001:db8::8]", ip("2001:db8::8")),
            ("::ffff:198.51.100.9", ip("198.51.100.9")),
            ("10.1.2.4, 10.1.2.3", ip("10.1.2.4")),
            ("198.51.100.23, junk, 10.1.2.3", ip("10.1.2.3")),
            ("198.51.100.23, ", ip("127.0.0.1")),
        ];
        for (header, expected) in cases {
            assert_eq!(
                proxies.client_addr(Some(proxy), &forwarded(header)),
                expected,
                "{header}"
            );
        }
        assert_eq!(
            proxies.client_addr(Some(mapped), &forwarded("198.51.100.20")),
            ip("198.51.100.20"),
            "an IPv4-mapped peer is the same proxy"
        );
        assert_eq!(
            proxies.client_addr(Some(other), &forwarded("203.0.113.9")),
            ip("198.51.100.7"),
            "an untrusted peer's header is ignored"
        );
        let empty = axum::http::HeaderMap::new();
        assert_eq!(proxies.client_addr(Some(proxy), &empty), ip("127.0.0.1"));
        // Several lines are one list, the last line the nearest.
        let mut lines = axum::http::HeaderMap::new();
        lines.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.30".parse().unwrap(),
        );
        lines.append("x-forwarded-for", "10.1.2.3".parse().unwrap());
        assert_eq!(
            proxies.client_addr(Some(proxy), &lines),
            ip("198.51.100.30")
        );
    }
}
