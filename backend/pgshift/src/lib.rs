//! pgshift: moves live PostgreSQL databases between servers with almost no downtime.
//!
//! - [`engine`]: change capture, ticks, the initial copy and apply, and the supervisor.
//! - [`store`]: the metadata store (clusters and migrations).
//! - [`service`]: the operations the HTTP API (and later the dashboard) call.
//! - [`http`]: the REST API.
//! - [`secrets`]: encryption of cluster DSNs at rest.

pub mod app;
pub mod auth;
pub mod base;
pub mod cli;
pub mod cli_tokens;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod http;
pub mod secrets;
pub mod service;
pub mod store;
