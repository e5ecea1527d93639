//! Engine layer: picking the tables a migration covers by `schema.table` patterns (`*` matches
//! any run of characters), in time linear in the name whatever the pattern, and refusing a
//! selection that is empty. A table without a key is replicated with whole-row identity.

use super::CatalogTable;
use crate::engine::{EngineError, EngineResult};

/// The longest table pattern accepted, in characters (a `schema.table` name has at most 127).
pub const MAX_PATTERN_CHARS: usize = 512;
/// The most table patterns one migration may have.
pub const MAX_PATTERNS: usize = 1_000;

/// A table pattern, compiled: `*` matches any run of characters; everything else matches
/// itself. Matching takes time linear in the name's length (a regular expression without
/// backtracking), whatever the pattern: `*a*a*a…` against a long name cannot stall the caller.
pub struct TablePattern(regex::Regex);

impl TablePattern {
    pub fn new(pattern: &str) -> EngineResult<Self> {
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            return Err(EngineError::invalid(
                "invalid_pattern",
                format!("a table pattern has more than {MAX_PATTERN_CHARS} characters"),
            ));
        }
        let body: Vec<String> = pattern.split('*').map(regex::escape).collect();
        regex::RegexBuilder::new(&format!("^(?s:{})$", body.join(".*")))
            .size_limit(1 << 20)
            .build()
            .map(TablePattern)
            .map_err(|_| {
                EngineError::invalid(
                    "invalid_pattern",
                    format!("table pattern {pattern:?} is too complex"),
                )
            })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

/// Whether `pattern` selects `name` (a pattern that cannot be compiled selects nothing).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    TablePattern::new(pattern).is_ok_and(|p| p.matches(name))
}

/// Picks the tables the patterns select; every pattern must select something.
pub fn select_tables(
    all: &[CatalogTable],
    patterns: Option<&[String]>,
) -> EngineResult<Vec<CatalogTable>> {
    let selected: Vec<CatalogTable> = match patterns {
        None => all.to_vec(),
        Some(patterns) => {
            if patterns.is_empty() {
                return Err(EngineError::invalid(
                    "no_tables",
                    "tables is empty: give at least one pattern, or omit it to migrate every table",
                ));
            }
            if patterns.len() > MAX_PATTERNS {
                return Err(EngineError::invalid(
                    "invalid_pattern",
                    format!("at most {MAX_PATTERNS} table patterns"),
                ));
            }
            let names: Vec<String> = all.iter().map(CatalogTable::display_name).collect();
            let mut compiled = Vec::with_capacity(patterns.len());
            for p in patterns {
                if p.trim().is_empty() {
                    return Err(EngineError::invalid(
                        "invalid_pattern",
                        "a table pattern is empty",
                    ));
                }
                let pattern = TablePattern::new(p)?;
                if !names.iter().any(|n| pattern.matches(n)) {
                    return Err(EngineError::invalid(
                        "pattern_matches_nothing",
                        format!("table pattern {p:?} matches no table in the source database (patterns match schema.table, e.g. \"public.orders\" or \"sales.*\")"),
                    ));
                }
                compiled.push(pattern);
            }
            all.iter()
                .zip(&names)
                .filter(|(_, n)| compiled.iter().any(|p| p.matches(n)))
                .map(|(t, _)| t.clone())
                .collect()
        }
    };
    if selected.is_empty() {
        return Err(EngineError::invalid(
            "no_tables",
            "the source database has no tables to migrate",
        ));
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns_match_schema_dot_table() {
        assert!(pattern_matches("public.*", "public.orders"));
        assert!(pattern_matches("*.orders", "sales.orders"));
        assert!(pattern_matches("public.ord*s", "public.orders"));
        assert!(!pattern_matches("public.ord", "public.orders"));
        assert!(pattern_matches("*", "x.y"));
        assert!(pattern_matches("public.Ünïcode", "public.Ünïcode"));
        assert!(pattern_matches("public.a.b", "public.a.b"));
        assert!(!pattern_matches("public.a.b", "public.aXb"));
        assert!(pattern_matches("p*(x)[y]+?", "public.t(x)[y]+?"));
        assert!(pattern_matches("*", "line\nbreak"));
        assert!(!pattern_matches(&"x".repeat(600), &"x".repeat(600)));
    }

    /// 30 `*`s against a 5,000-character name that does not match: a backtracking matcher tries
    /// more combinations than it could finish; this one answers at once. Run on a thread so that
    /// a regression fails here instead of hanging the suite.
    #[test]
    fn many_stars_against_a_long_name_match_in_linear_time() {
        let pattern = format!("{}b", "*a".repeat(30));
        let name = "a".repeat(5_000);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(pattern_matches(&pattern, &name));
        });
        let matched = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("matching 30 stars against 5,000 characters never finished");
        assert!(!matched);
    }
}
