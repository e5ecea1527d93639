//! The engine layer: everything that talks to the migrated servers. Capture on the source, ticks,
//! the initial copy and exactly-once apply on the target (with its bookkeeping), the supervisor
//! that runs them for every active migration, and the cutover. Imports only the store, secrets
//! and the foundation; the service layer calls it.

mod apply;
pub mod batch;
pub mod catalog;
pub(crate) mod copy;
pub mod cutover;
pub mod ddl;
mod error;
pub mod key_ops;
mod left_freezes;
pub mod partition_bound;
pub(crate) mod partitions;
pub mod pg;
pub mod resync;
pub mod rotation;
pub mod row_format;
mod runner;
pub mod schema;
mod settings;
pub(crate) mod source;
pub mod special;
mod status;
mod supervisor;
pub mod table_set;
mod target;
mod ticker;
mod truncate;
mod worker;

pub use error::{EngineError, EngineResult};
pub use settings::EngineSettings;
pub use source::install as install_capture;
pub use status::{MigrationStatus, RuntimeState, TableStatus};
pub use supervisor::Supervisor;
pub use target::tables_with_rows as target_tables_with_rows;
pub use ticker::TickerSettings;

// Quoting lives in the foundation (the store's records quote their names too); engine code
// keeps calling it by this path.
pub use crate::base::quote::{quote_ident, quote_literal};
