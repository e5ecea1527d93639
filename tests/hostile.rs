//! Hostile clients and hostile tenants (issue 12): the server stays up, small and honest under
//! abuse. Load-shaped tests are bounded in count and time, on loopback, and compare figures taken
//! within one run rather than against fixed times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use pgshift::auth::Role;
use pgshift_tests::dashboard::create_user;
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, PgCluster};
use reqwest::StatusCode;
use serde_json::json;

/// Resident memory of this process (the test server runs inside it), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/ui/sign-in"))
        .form(&[("name", name), ("password", password), ("next", "/ui")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("sign-in for {name} got no answer: {e}"))
}

/// 60 concurrent wrong passwords for one name: the throttle is decided before any hash, so at
/// most its limit get as far as a password check; the rest are refused with `Retry-After`.
#[tokio::test]
async fn concurrent_wrong_passwords_cannot_race_the_throttle() {
    init_tracing();
    let server = TestServer::start().await;
    create_user(
        &server.data_dir,
        "olga",
        Role::Operator,
        "operator-password-1",
    )
    .await;
    let http = client(64);
    let base = server.base.clone();
    let answers: Vec<(StatusCode, Option<String>)> = stream::iter(0..60)
        .map(|_| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let r = sign_in(&http, &base, "olga", "guess-guess-guess").await;
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status(), retry)
            }
        })
        .buffer_unordered(60)
        .collect()
        .await;
    let checked = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        checked <= 5,
        "{checked} of 60 concurrent attempts got a password check: {answers:?}"
    );
    for (status, retry) in &answers {
        match *status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let secs: u64 = retry
                    .as_deref()
                    .unwrap_or_else(|| panic!("{status} without Retry-After"))
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(secs >= 1);
            }
            other => panic!("unexpected answer {other}: {answers:?}"),
        }
    }
    // The right password is refused too while the name is throttled.
    let r = sign_in(&http, &base, "olga", "operator-password-1").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// 400 concurrent sign-ins from one address: `/healthz` keeps answering throughout, and resident
/// memory after the flood stays within a small multiple of what it was before (each password
/// hash takes 19 MiB; unbounded, 400 of them at once take gigabytes and keep them).
#[tokio::test]
async fn a_sign_in_flood_keeps_memory_flat_and_healthz_answering() {
    init_tracing();
    let server = TestServer::start().await;
    let base = server.base.clone();
    let http = client(400);
    // Warm up: two sign-ins at once (the hashing threads and their memory exist from here on).
    let warm: Vec<StatusCode> = futures_util::future::join_all(["warm-1", "warm-2"].map(|n| {
        let http = http.clone();
        let base = base.clone();
        async move { sign_in(&http, &base, n, "not-the-password").await.status() }
    }))
    .await;
    assert!(
        warm.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{warm:?}"
    );
    let before = resident_kib();

    let flooding = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let flooding = flooding.clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            while flooding.load(Ordering::Relaxed) {
                peak.fetch_max(resident_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let health = {
        let flooding = flooding.clone();
        let http = client(1);
        let base = base.clone();
        tokio::spawn(async move {
            let mut answered = 0u32;
            while flooding.load(Ordering::Relaxed) {
                let r = http
                    .get(format!("{base}/healthz"))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("/healthz answers during the flood");
                assert_eq!(r.status(), StatusCode::OK);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answered
        })
    };
    let statuses: Vec<StatusCode> = stream::iter(0..400)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            async move {
                sign_in(&http, &base, &format!("flood-{i}"), "not-the-password")
                    .await
                    .status()
            }
        })
        .buffer_unordered(400)
        .collect()
        .await;
    flooding.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let answered = health.await.expect("/healthz answered every time");
    let after = resident_kib();
    let peak = peak.load(Ordering::Relaxed).max(after);
    let count = |s: StatusCode| statuses.iter().filter(|x| **x == s).count();
    eprintln!(
        "flood: {} checked (401), {} throttled (429), {} busy (503); /healthz answered {answered} times; resident {before} KiB before, peak {peak} KiB, {after} KiB after",
        count(StatusCode::UNAUTHORIZED),
        count(StatusCode::TOO_MANY_REQUESTS),
        count(StatusCode::SERVICE_UNAVAILABLE),
    );
    assert!(answered >= 1, "/healthz was never asked during the flood");
    assert!(
        statuses.iter().all(|s| matches!(
            *s,
            StatusCode::UNAUTHORIZED
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
        )),
        "{statuses:?}"
    );
    // Bounded, not proportional to the flood: the process holds both ends of 400 connections
    // and two argon2 buffers (19 MiB each), and the allocator keeps some of it; unbounded
    // hashing grew it by about 5 GB. (A 2.5x ratio to the starting size was too tight for the
    // allocator's variance: one run peaked at 2.6x, 141 MiB over the start.)
    assert!(
        peak.saturating_sub(before) <= 512 * 1024,
        "resident memory grew from {before} KiB to a peak of {peak} KiB during the flood"
    );
    assert!(
        after.saturating_sub(before) <= 512 * 1024,
        "resident memory stayed at {after} KiB after the flood (was {before} KiB)"
    );
}

/// `/metrics` keeps one series per route pattern and known method: 20,000 requests with made-up
/// methods (to routes and to paths that match none) add at most a bucket, and `/healthz` answers
/// meanwhile.
#[tokio::test]
async fn junk_methods_and_paths_do_not_grow_metrics() {
    init_tracing();
    let server = TestServer::start().await;
    let base = server.base.clone();
    let http = client(16);
    let scrape = |http: reqwest::Client, base: String| async move {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap().len()
    };
    // Every kind of request once, so that the buckets exist before the first measure.
    for path in ["/healthz", "/api/v1/migrations", "/no/such/path"] {
        let m = reqwest::Method::from_bytes(b"WARMUP").unwrap();
        http.request(m, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        http.get(format!("{base}{path}")).send().await.unwrap();
    }
    let before = scrape(http.clone(), base.clone()).await;
    let answered: Vec<bool> = stream::iter(0..20_000u32)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let method = reqwest::Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
                let path = match i % 3 {
                    0 => "/healthz".to_string(),
                    1 => "/api/v1/migrations".to_string(),
                    _ => format!("/junk/{i}"),
                };
                if i % 1000 == 0 {
                    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::OK, "/healthz during the junk");
                }
                http.request(method, format!("{base}{path}"))
                    .send()
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(answered.iter().all(|a| *a), "a junk request got no answer");
    let after = scrape(http.clone(), base.clone()).await;
    eprintln!("metrics scrape: {before} bytes before, {after} bytes after 20,000 junk requests");
    assert!(
        after <= before * 2,
        "the scrape grew from {before} to {after} bytes"
    );
}

/// A migration whose table pattern has 22 `*`s, against a source whose table has a 63-character
/// name: refused at once as matching nothing (a backtracking matcher never finished, and held a
/// runtime thread meanwhile), and `/healthz` answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_of_many_stars_is_matched_in_linear_time() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("src").await;
    pg.create_database("dst").await;
    let table = "a".repeat(63);
    for db in ["src", "dst"] {
        pg.psql(db, &format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
            .await;
    }
    let server = TestServer::start().await;
    server.add_cluster("c", &pg.admin_dsn()).await;
    let pattern = format!("{}b", "*a".repeat(22));
    let create = server.post(
        "/migrations",
        json!({
            "name": "stars",
            "source": {"cluster": "c", "database": "src"},
            "target": {"cluster": "c", "database": "dst"},
            "tables": [pattern],
        }),
    );
    let health = async {
        for _ in 0..5 {
            let r = server
                .client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .expect("/healthz answers");
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    // A hang fails here (before the client's own 60 s timeout), and the server is left behind
    // rather than dropped: dropping waits for its threads, one of which would never finish.
    let Ok(((status, body), ())) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(create, health)
    })
    .await
    else {
        std::mem::forget(server);
        panic!("creating a migration with 22 stars in a pattern did not finish within 30 s");
    };
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "pattern_matches_nothing", "{body}");
    // Patterns longer than any table name can be are refused as such.
    let (status, body) = server
        .post(
            "/migrations",
            json!({
                "name": "long",
                "source": {"cluster": "c", "database": "src"},
                "target": {"cluster": "c", "database": "dst"},
                "tables": ["*".repeat(10_000)],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_pattern", "{body}");
}

/// No template puts anything inside inline JavaScript: no `on…=` handler attributes, no inline
/// `<script>` bodies, no `javascript:` URLs. The dashboard's Content-Security-Policy blocks
/// inline script anyway, so a confirmation written that way never asked (and a table named
/// `x');…` would have been code); confirmations are typed fields and pages instead.
#[test]
fn no_template_has_inline_javascript() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/templates");
    let mut found = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("web/templates") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "html") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let lower = text.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        for (i, _) in lower.match_indices("on") {
            // An attribute: whitespace before `on`, letters after it, then `=`.
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let rest = &lower[i + 2..];
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            let after = rest[letters..].trim_start();
            if matches!(before, Some(b' ' | b'\n' | b'\t' | b'"' | b'\''))
                && letters > 0
                && after.starts_with('=')
            {
                found.push(format!("{}: on{}=", path.display(), &rest[..letters]));
            }
        }
        for (i, _) in lower.match_indices("<script") {
            let tag_end = lower[i..].find('>').map(|e| i + e).unwrap_or(lower.len());
            let tag = &lower[i..tag_end];
            let body_empty = lower[tag_end + 1..].starts_with("</script>");
            if !tag.contains(" src=") || !body_empty {
                found.push(format!("{}: inline <script>", path.display()));
            }
        }
        if lower.contains("javascript:") {
            found.push(format!("{}: javascript: URL", path.display()));
        }
    }
    assert!(
        checked >= 10,
        "only {checked} templates found in {}",
        dir.display()
    );
    assert!(
        found.is_empty(),
        "inline JavaScript in templates: {found:#?}"
    );
}

/// The value of an unlabelled series in a `/metrics` scrape (0 when absent).
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().expect("a counter's value"))
}

/// Bytes of the SQLite store's files (the database and its write-ahead log).
fn store_bytes(server: &TestServer) -> u64 {
    ["pgshift.db", "pgshift.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(server.data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Anonymous state-changing requests (a 60 KB name in the path, a start aimed at a real
/// migration's name, a forged token) are refused and counted on `/metrics`, and nothing of them
/// reaches the audit trail: they can neither grow the store nor push real entries out of a
/// migration's trail. Authenticated entries are still recorded, their names cut to a bounded
/// length before they are written.
#[tokio::test]
async fn anonymous_requests_are_counted_not_stored() {
    init_tracing();
    let server = TestServer::start().await;
    let base = server.base.clone();
    let http = client(8);
    let long = "a".repeat(60 * 1024);
    let before = store_bytes(&server);
    let refused_before = metric(&server, "pgshift_http_unauthenticated_refusals_total").await;
    let statuses: Vec<StatusCode> = stream::iter(0..300u32)
        .map(|i| {
            let http = http.clone();
            let url = match i % 3 {
                0 => format!("{base}/api/v1/clusters/{long}"),
                _ => format!("{base}/api/v1/migrations/m1/start"),
            };
            async move {
                let request = match i % 3 {
                    0 => http.delete(url),
                    1 => http.post(url),
                    _ => http.post(url).bearer_auth("forged.token.value"),
                };
                request.send().await.expect("an answer").status()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    let (status, entries) = server.get("/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{entries}");
    assert_eq!(
        entries.as_array().unwrap().len(),
        0,
        "anonymous requests were stored: {}",
        &entries.to_string()[..500.min(entries.to_string().len())]
    );
    let (_, m1) = server.get("/audit?migration=m1").await;
    assert_eq!(m1, json!([]), "m1's trail");
    let grown = store_bytes(&server).saturating_sub(before);
    assert!(
        grown < 1024 * 1024,
        "the store grew by {grown} bytes from refused requests"
    );
    let refused = metric(&server, "pgshift_http_unauthenticated_refusals_total").await;
    assert_eq!(
        refused - refused_before,
        300,
        "refusals counted on /metrics"
    );

    // Authenticated requests are recorded, with the name cut short.
    let (status, body) = server.delete(&format!("/clusters/{long}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let viewer = server.token_for(Role::Viewer, "vera").await;
    let r = server
        .client
        .post(server.url("/migrations/m1/start"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, entries) = server.get("/audit").await;
    let entries = entries.as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["actor"], "vera");
    assert_eq!(entries[0]["object_name"], "m1");
    let name = entries[1]["object_name"].as_str().expect("a name");
    assert!(
        name.len() <= 256 && name.starts_with("aaaa"),
        "a {}-byte object name was stored",
        name.len()
    );
}

/// A dashboard sign-in as it arrives through a proxy: `forwarded` is the `X-Forwarded-For` the
/// proxy passes on (what the client sent, then the address the proxy appended).
async fn sign_in_via(
    client: &reqwest::Client,
    base: &str,
    forwarded: &str,
    name: &str,
    password: &str,
) -> StatusCode {
    client
        .post(format!("{base}/ui/sign-in"))
        .header("x-forwarded-for", forwarded)
        .form(&[("name", name), ("password", password), ("next", "/ui")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("sign-in for {name} got no answer: {e}"))
        .status()
}

/// The `client_ip` the audit trail records for an admin's request sent with `forwarded` as its
/// `X-Forwarded-For` (none when `None`).
async fn audited_client_ip(server: &TestServer, forwarded: Option<&str>) -> String {
    let mut request = server
        .client
        .delete(server.url("/clusters/nothere"))
        .bearer_auth(&server.token);
    if let Some(f) = forwarded {
        request = request.header("x-forwarded-for", f);
    }
    assert_eq!(
        request.send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let (_, entries) = server.get("/audit?limit=1").await;
    entries[0]["client_ip"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_ip: {entries}"))
        .to_string()
}

/// Sign-in attempts from one address that the throttle counts before refusing it (four times
/// the per-name limit).
const ADDRESS_LIMIT: usize = 20;

/// Without `trusted_proxies` (the default) no `X-Forwarded-For` is believed, not even from a
/// loopback peer: a client on this machine cannot name another address in the audit trail, nor
/// step around the per-address sign-in throttle by changing the header on every attempt.
#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    init_tracing();
    let server = TestServer::start().await;
    assert_eq!(
        audited_client_ip(&server, Some("203.0.113.9")).await,
        "127.0.0.1"
    );
    let http = client(1);
    for i in 0..ADDRESS_LIMIT {
        let status = sign_in_via(
            &http,
            &server.base,
            &format!("10.9.0.{i}"),
            &format!("rotating-{i}"),
            "not-the-password",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let status = sign_in_via(
        &http,
        &server.base,
        "10.9.1.1",
        "rotating-last",
        "not-the-password",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a new X-Forwarded-For on every attempt escaped the per-address throttle"
    );
}

/// Behind proxies that append the address they saw (nginx's `$proxy_add_x_forwarded_for`), with
/// the loopback proxy and an inner network listed in `trusted_proxies`: the client is the
/// rightmost address that is not a trusted proxy, so whatever the client itself put in the
/// header is ignored: in the audit trail, for the sign-in throttle, and so it cannot lock
/// another address out.
#[tokio::test]
async fn the_client_is_the_rightmost_address_not_a_trusted_proxy() {
    init_tracing();
    let server = TestServer::start_configured(|c| {
        c.trusted_proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    let cases = [
        (None, "127.0.0.1"),
        (Some("198.51.100.20"), "198.51.100.20"),
        (Some("203.0.113.9, 198.51.100.20"), "198.51.100.20"),
        (
            Some("203.0.113.9, 198.51.100.21, 10.1.2.3"),
            "198.51.100.21",
        ),
        (Some("203.0.113.9,198.51.100.22:4711"), "198.51.100.22"),
        (Some("[2001:db8::7]:443"), "2001:db8::7"),
        // Only trusted proxies: the farthest of them.
        (Some("10.1.2.4, 10.1.2.3"), "10.1.2.4"),
        // Something that is not an address: the nearest trusted hop before it.
        (Some("198.51.100.23, not-an-address, 10.1.2.3"), "10.1.2.3"),
    ];
    for (forwarded, expected) in cases {
        assert_eq!(
            audited_client_ip(&server, forwarded).await,
            expected,
            "X-Forwarded-For: {forwarded:?}"
        );
    }
    create_user(
        &server.data_dir,
        "victor",
        Role::Viewer,
        "victor-password-1",
    )
    .await;
    let http = client(1);
    // An attacker at 203.0.113.66 writes the victim's address (198.51.100.7) into the header:
    // its own address is the one counted, so the victim is not locked out, and the attacker is
    // refused past the limit whatever it writes next.
    for i in 0..ADDRESS_LIMIT {
        let status = sign_in_via(
            &http,
            &server.base,
            "198.51.100.7, 203.0.113.66",
            &format!("guess-{i}"),
            "not-the-password",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let status = sign_in_via(
        &http,
        &server.base,
        "198.51.100.7",
        "victor",
        "victor-password-1",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the victim signs in");
    let status = sign_in_via(
        &http,
        &server.base,
        "192.0.2.1, 10.9.0.1, 203.0.113.66",
        "guess-last",
        "not-the-password",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the attacker's address"
    );
}

/// The permission bits of `path`, in octal (`0600`).
fn mode_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode();
    format!("{:04o}", mode & 0o7777)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Takes the immutable attribute off a file when dropped, so that the test's directory can go
/// even when an assertion fails.
struct Immutable(std::path::PathBuf);

impl Immutable {
    /// `None` where `chattr +i` is not allowed (not root, or a file system without it).
    fn set(path: &std::path::Path) -> Option<Immutable> {
        let done = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        done.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Removes a test's data directory when dropped, even when an assertion fails.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The data directory holds password hashes, session and CSRF tokens, the token signing key and
/// the DSN keys: pgshift's files in it are 0600 from their creation, and a directory whose modes
/// an operator opened (0755, 0644) is made private again at start (other files in it are left
/// alone). When a mode cannot be changed, the server refuses to start and says which file.
#[tokio::test]
async fn the_data_directory_is_made_private_at_start() {
    init_tracing();
    let server = TestServer::start().await;
    let dir = server.stop().await;
    let _remove = RemoveDir(dir.clone());
    let files = ["pgshift.db", "server-key.json", "secret-keys.json"];
    assert_eq!(mode_of(&dir), "0700", "a new data directory");
    for f in files {
        assert_eq!(mode_of(&dir.join(f)), "0600", "a new {f}");
    }

    // Copied, restored or created by hand with the usual umask.
    set_mode(&dir, 0o755);
    for f in files {
        set_mode(&dir.join(f), 0o644);
    }
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "the operator's own file").unwrap();
    set_mode(&notes, 0o644);
    let server = TestServer::start_in(&dir, pgshift_tests::server::test_settings()).await;
    let (status, _) = server.get("/clusters").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mode_of(&dir), "0700", "the data directory at start");
    for f in files {
        assert_eq!(mode_of(&dir.join(f)), "0600", "{f} at start");
    }
    for f in ["pgshift.db-wal", "pgshift.db-shm"] {
        let path = dir.join(f);
        if path.exists() {
            assert_eq!(mode_of(&path), "0600", "{f}, made by SQLite");
        }
    }
    assert_eq!(mode_of(&notes), "0644", "a file that is not pgshift's");
    let dir = server.stop().await;

    // A mode that cannot be changed: the server does not start, and says why.
    let db = dir.join("pgshift.db");
    set_mode(&db, 0o644);
    match Immutable::set(&db) {
        None => eprintln!("chattr +i is not allowed here: the refusal is not exercised"),
        Some(_immutable) => {
            let config =
                pgshift::config::ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
            let err = match pgshift::app::Application::build(config).await {
                Ok(_) => panic!("the server started with {} at mode 0644", db.display()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&db.display().to_string()) && err.contains("0644"),
                "{err}"
            );
        }
    }
}
