//! Foundation layer: URLs fit for logs and records, their passwords left out. Used for the
//! metadata store's URL (in the configuration's `Debug` and the store's errors) and webhook URLs.

/// The scheme of `url` (before `://`), if it looks like one.
pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// `url` fit for logs: scheme, host, port and database; user, password and query left out.
pub fn redact_url(url: &str) -> String {
    let Some(scheme) = url_scheme(url) else {
        return "(not a URL)".into();
    };
    if url.contains("password=") {
        return format!("{scheme}://…");
    }
    let rest = &url[scheme.len() + 3..];
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let (after, query) = match after.split_once('?') {
        Some((a, _)) => (a, true),
        None => (after, false),
    };
    let redacted = format!(
        "{scheme}://{}{after}{}",
        if userinfo { "…@" } else { "" },
        if query { "?…" } else { "" }
    );
    // Belt and braces for malformed URLs (an unencoded '@' or '?' in the password).
    if url_secrets(url)
        .iter()
        .any(|s| redacted.contains(s.as_str()))
    {
        format!("{scheme}://…")
    } else {
        redacted
    }
}

/// The passwords a URL carries (in its user info or a `password=` parameter), as written and
/// percent-decoded, so that errors and logs can be checked for them.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(at) = rest.rfind('@') {
        if let Some((_, password)) = rest[..at].split_once(':') {
            found.push(password.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("password=") {
                found.push(value.to_string());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords() {
        for (url, expected) in [
            (
                "postgresql://u:secretpw@h:5432/db",
                "postgresql://…@h:5432/db",
            ),
            (
                "postgres://h/db?password=secretpw&sslmode=require",
                "postgres://…",
            ),
            ("postgres://h/db?password=se@cretpw", "postgres://…"),
            (
                "postgres://u:x?secretpw@h/db?sslmode=disable",
                "postgres://…@h/db?…",
            ),
            ("postgresql://u:se%40cretpw@h/db", "postgresql://…@h/db"),
            ("postgresql://u:a@secretpw@h/db", "postgresql://…@h/db"),
            ("postgresql://h/db", "postgresql://h/db"),
            ("u:secretpw@h", "(not a URL)"),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn url_secrets_finds_both_forms() {
        let s = url_secrets("postgresql://u:p%40ss@h/db?password=q");
        assert!(s.contains(&"p%40ss".to_string()));
        assert!(s.contains(&"p@ss".to_string()));
        assert!(s.contains(&"q".to_string()));
    }
}
