//! pgshift: moves live PostgreSQL databases between servers with almost no downtime.
//!
//! The crate is in layers; each module imports only from the layers below it (see
//! `docs/architecture.md`), and the API and the dashboard are siblings that never import each
//! other.
//!
//! - Command line: [`cli`] (`pgshift serve`, `user`), [`cli_tokens`] (`pgshift token`) and
//!   [`client`] (`pgshift cluster|migration …` against a running server's API).
//! - Start-up: [`app`] (building and running the server, the top-level router, background tasks)
//!   and [`config`] (the typed configuration, layered once).
//! - Web: [`http`] (the REST API, health and metrics) and [`dashboard`] (the pages under `/ui`).
//! - [`service`]: the operations both front ends call, the application state, the audit trail,
//!   users and tokens, what monitoring reads, and how failures are answered.
//! - [`engine`]: the catalog checks a migration passes before anything is installed, change
//!   capture, ticks, the initial copy and apply, the supervisor, the cutover.
//! - Store and keys: [`store`] (the metadata store, SQLite or PostgreSQL), [`auth`] (token
//!   signing) and [`secrets`] (encryption of cluster DSNs at rest).
//! - [`base`]: the foundation: roles, SQL quoting, URL redaction, the data directory, the task
//!   registry.

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
