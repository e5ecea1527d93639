//! The foundation layer: small items every other layer may use, importing nothing from the rest
//! of the crate: roles, SQL quoting, URL redaction, the data directory and the registry of background tasks.

pub mod data_dir;
pub mod quote;
pub mod redact;
mod role;
pub mod tasks;

pub use data_dir::DataDir;
pub use quote::{quote_ident, quote_literal};
pub use redact::redact_url;
pub use role::Role;
pub use tasks::TaskSet;
