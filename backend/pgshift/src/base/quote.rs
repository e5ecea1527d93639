//! Foundation layer: quoting of SQL identifiers and literals, as PostgreSQL's own functions do.
//! The store's records quote their table names with it and the engine every name it writes.

/// Quotes an identifier for SQL, exactly as PostgreSQL's `quote_ident` would when quoting is needed.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal exactly as PostgreSQL's `quote_literal` does: a value with a backslash
/// becomes an escape string (`E'…'`, backslashes doubled), whose meaning does not depend on
/// `standard_conforming_strings`. That matters beyond pgshift's own sessions (which pin the
/// setting): literals inside the capture functions are parsed in the application's sessions,
/// where a database owner may have turned it off.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("Order\"s"), "\"Order\"\"s\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn literals_with_backslashes_are_escape_strings() {
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(
            quote_literal(r"k\'); DROP TABLE t; --"),
            r"E'k\\''); DROP TABLE t; --'"
        );
    }
}
