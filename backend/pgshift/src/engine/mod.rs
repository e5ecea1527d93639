//! The migration engine: capture on the source, ticks, the initial copy and exactly-once apply
//! on the target, and the supervisor that runs them for every active migration.

mod apply;
mod batch;
pub mod catalog;
mod copy;
pub mod cutover;
mod error;
pub mod pg;
pub mod resync;
pub mod rotation;
mod runner;
mod source;
mod status;
mod supervisor;
mod target;
mod ticker;

pub use error::{EngineError, EngineResult};
pub use source::install as install_capture;
pub use status::{MigrationStatus, RuntimeState, TableStatus};
pub use supervisor::{EngineSettings, Supervisor};
pub use ticker::TickerSettings;

/// Quotes an identifier for SQL, exactly as PostgreSQL's `quote_ident` would when quoting is needed.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal (standard_conforming_strings is on in every supported server).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("Order\"s"), "\"Order\"\"s\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
