//! Dashboard layer: what templates show, computed from service views: numbers formatted, states in
//! words.

use crate::service::migrations::MigrationView;

use super::session::SignedIn;

/// The header's navigation and the signed-in user.
pub struct Nav {
    pub page: &'static str,
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub is_admin: bool,
    pub can_operate: bool,
}

impl Nav {
    pub fn new(page: &'static str, who: &SignedIn) -> Self {
        Nav {
            page,
            user: who.user.name.clone(),
            role: who.user.role.to_string(),
            csrf: who.session.csrf_token.clone(),
            is_admin: who.is_admin(),
            can_operate: who.can_operate(),
        }
    }
}

/// A progress bar: rows copied of rows estimated.
pub struct Progress {
    pub percent: String,
    pub text: String,
    pub done: bool,
}

impl Progress {
    pub fn new(copied: i64, estimated: Option<i64>, done: bool) -> Self {
        let estimated = estimated.unwrap_or(0).max(0);
        let ratio = if done {
            1.0
        } else if estimated > 0 {
            (copied as f64 / estimated as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let text = if estimated == 0 && !done {
            format!("{} rows copied (no estimate yet)", thousands(copied))
        } else {
            format!(
                "{} / {} rows ({:.0} %)",
                thousands(copied),
                thousands(estimated),
                ratio * 100.0
            )
        };
        Progress {
            percent: format!("{:.1}", ratio * 100.0),
            text,
            done,
        }
    }
}

/// What a state is called on the page (always shown with its colour).
pub fn state_words(state: &str) -> &'static str {
    match state {
        "created" => "Created",
        "starting" => "Starting",
        "pending" => "Waiting to copy",
        "copying" => "Copying",
        "catching_up" => "Catching up",
        "synced" => "Synced",
        "paused" => "Paused",
        "error" => "Error",
        "cut_over" => "Cut over",
        _ => "Unknown",
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn lag_text(lag: Option<f64>) -> String {
    lag.map_or_else(|| "–".into(), |l| format!("{l:.1} s"))
}

pub fn count_text(n: Option<i64>) -> String {
    n.map_or_else(|| "–".into(), thousands)
}

/// Seconds as "45 s", "12 min", "3 h 5 min".
pub fn duration_text(secs: f64) -> String {
    let s = secs.round() as i64;
    if s < 90 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

/// One migration on the overview.
pub struct MigrationRow {
    pub name: String,
    pub state: String,
    pub state_words: &'static str,
    pub source: String,
    pub target: String,
    pub lag: String,
    pub pending: String,
    pub progress: Progress,
    pub tables_synced: usize,
    pub tables_total: usize,
    pub error: Option<String>,
}

impl MigrationRow {
    pub fn new(m: &MigrationView) -> Self {
        let copied: i64 = m.tables.iter().map(|t| t.rows_copied).sum();
        let estimated: i64 = m.tables.iter().filter_map(|t| t.rows_estimated).sum();
        let all_copied = !m.tables.is_empty()
            && m.tables
                .iter()
                .all(|t| t.state == "synced" || t.state == "catching_up");
        let table_error = m
            .tables
            .iter()
            .find_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)));
        MigrationRow {
            name: m.name.clone(),
            state: m.state.clone(),
            state_words: state_words(&m.state),
            source: format!("{}/{}", m.source.cluster, m.source.database),
            target: format!("{}/{}", m.target.cluster, m.target.database),
            lag: lag_text(m.lag_seconds),
            pending: count_text(m.pending_events),
            progress: Progress::new(copied, Some(estimated), all_copied),
            tables_synced: m.tables.iter().filter(|t| t.state == "synced").count(),
            tables_total: m.tables.len(),
            error: m.error.clone().or(table_error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(duration_text(42.0), "42 s");
        assert_eq!(duration_text(600.0), "10 min");
        assert_eq!(duration_text(3900.0), "1 h 5 min");
        let p = Progress::new(50, Some(200), false);
        assert_eq!(p.percent, "25.0");
        assert!(Progress::new(10, None, true).done);
    }
}
