//! Service layer: operations' webhooks: which destinations the server may call (the policy,
//! checked on the addresses a name resolves to), how a URL is shown (without its secret path),
//! and the delivery of an operation's events, in order, without holding the operation up.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Which webhook destinations the server may call: any public address, and a non-public one
/// (loopback, private, link-local, shared, unique-local, …) only inside a network the server's
/// configuration lists (`webhook_allowed_networks`). Checked on the addresses a name resolves to
/// when each request is sent, not on the host name as written.
#[derive(Clone, Debug, Default)]
pub struct WebhookPolicy {
    allowed: Arc<Vec<ipnet::IpNet>>,
}

/// Why a webhook URL is refused (said to the operator who gave it).
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefused {
    #[error("webhook_url must be an http:// or https:// URL with a host")]
    Malformed,
    #[error("webhook_url's host {0} does not resolve")]
    Unresolved(String),
    #[error("webhook_url's host {0} is (or resolves to) an address outside the webhook destinations this server allows (loopback, private and link-local ranges need webhook_allowed_networks in the server's configuration)")]
    NotAllowed(String),
}

impl WebhookPolicy {
    pub fn new(allowed: Vec<ipnet::IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether the server may send a webhook to `ip`.
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        public_address(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks a webhook URL before an operation starts: its form, and every address its host
    /// resolves to now (each delivery checks the addresses again as it connects).
    pub async fn check(&self, url: &str) -> Result<(), WebhookRefused> {
        let url = reqwest::Url::parse(url).map_err(|_| WebhookRefused::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookRefused::Malformed);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(WebhookRefused::Malformed)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::IpAddr> = match literal.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| WebhookRefused::Unresolved(host.to_string()))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(WebhookRefused::Unresolved(host.to_string()));
        }
        if addrs.iter().all(|ip| self.permits(*ip)) {
            Ok(())
        } else {
            Err(WebhookRefused::NotAllowed(host.to_string()))
        }
    }
}

/// Whether `ip` is a public unicast address (none of the special-purpose ranges).
fn public_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240) // reserved
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6.to_ipv4_mapped().is_some()
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
        }
    }
}

/// Resolves webhook hosts to only the addresses the policy permits (none: the delivery fails).
struct PolicyResolver(WebhookPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err("the host resolves to no allowed webhook destination".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A webhook URL as shown (operation requests and results, logs): scheme, host and port only.
/// The path and query often are the secret (Slack-style hooks), so they go like a password.
pub fn redact_webhook_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let host = parsed.host_str().unwrap_or("");
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = (parsed.path() != "/" && !parsed.path().is_empty())
        || parsed.query().is_some()
        || parsed.fragment().is_some();
    format!(
        "{}://{}{host}{port}{}",
        parsed.scheme(),
        if parsed.username().is_empty() && parsed.password().is_none() {
            ""
        } else {
            "…@"
        },
        if hidden { "/…" } else { "" }
    )
}

/// Delivers an operation's events, in order, to a webhook without holding the operation up.
/// Never follows a redirect; each event is recorded as delivered (a 2xx answer) or not, and the
/// reason for a failure goes to the log only (the answer's status would make the webhook a probe
/// of whatever it reaches).
pub(super) struct Webhook {
    pub(super) tx: mpsc::UnboundedSender<Value>,
    task: JoinHandle<(u32, Vec<String>)>,
    /// The URL without its path or credentials, for messages.
    shown: String,
}

impl Webhook {
    pub(super) fn start(url: String, policy: WebhookPolicy) -> Self {
        let shown = redact_webhook_url(&url);
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let label = shown.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(PolicyResolver(policy)))
                .build();
            let mut delivered = 0;
            let mut failures = Vec::new();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("cannot build an HTTP client: {e}"));
                    return (0, failures);
                }
            };
            while let Some(event) = rx.recv().await {
                let outcome = client.post(&url).json(&event).send().await;
                let failure = match outcome {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("answered {}", r.status())),
                    Err(e) => Some(e.without_url().to_string()),
                };
                match failure {
                    None => delivered += 1,
                    Some(f) => {
                        tracing::warn!(webhook = %label, event = %event["event"], error = %f, "webhook delivery failed");
                        failures.push(format!(
                            "{} {}: not delivered",
                            event["event"].as_str().unwrap_or(""),
                            event["step"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
            (delivered, failures)
        });
        Self { tx, task, shown }
    }

    /// Waits (boundedly) for the queue to empty; returns a summary for the result.
    pub(super) async fn close(self) -> Value {
        drop(self.tx);
        match tokio::time::timeout(Duration::from_secs(15), self.task).await {
            Ok(Ok((delivered, failures))) => {
                json!({"url": self.shown, "delivered": delivered, "failures": failures})
            }
            _ => json!({"url": self.shown, "failures": ["deliveries still pending after 15 s"]}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_unless_listed() {
        let policy = WebhookPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!policy.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(policy.permits(ip.parse().unwrap()), "{ip}");
        }
        let listed = WebhookPolicy::new(vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(listed.permits("10.1.9.9".parse().unwrap()));
        assert!(listed.permits("::ffff:10.1.9.9".parse().unwrap()));
        assert!(!listed.permits("10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn webhook_urls_are_shown_without_path_query_or_credentials() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/secret",
                "https://hooks.slack.com/…",
            ),
            (
                "https://h.example:8443/x?token=s",
                "https://h.example:8443/…",
            ),
            ("https://u:pw@h.example/", "https://…@h.example"),
            ("http://h.example", "http://h.example"),
            ("not a url", "(not a URL)"),
        ] {
            assert_eq!(redact_webhook_url(url), shown, "{url}");
        }
    }
}
