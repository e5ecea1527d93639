//! Service layer: the audit trail. The API's middleware and the dashboard's actions record their
//! entries through here, and the API lists them through here; neither front end writes the store
//! itself. Also who the client is: the address both front ends put in entries and the sign-in
//! throttle counts.

use std::net::{IpAddr, SocketAddr};

use super::{App, ServiceResult};
use crate::store::{AuditEntry, AuditFilter, NewAuditEntry};

/// Entries returned when no limit is given, and the most ever returned.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// Records one entry. A failure to record is logged and never fails the action it describes.
pub async fn record(app: &App, entry: &NewAuditEntry) {
    if let Err(err) = app.store.insert_audit(entry).await {
        // No request detail here: only why the store refused.
        tracing::warn!(error = %err, "cannot record an audit entry");
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
