//! Logging: everything goes to stderr (filter from `RUST_LOG`, default `warn,pgshift=info`), and
//! pgshift's own events at INFO and above are also kept for the report, warnings and errors
//! counted apart: an error in pgshift's log during a benchmark is a finding.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Entries kept for the report; later ones are counted only.
const KEEP: usize = 300;

#[derive(Clone)]
pub struct Entry {
    /// Seconds since the benchmark started.
    pub at: f64,
    pub level: Level,
    pub target: String,
    pub text: String,
}

struct Store {
    entries: Vec<Entry>,
    warnings_and_errors: Vec<Entry>,
}

static STORE: Mutex<Store> = Mutex::new(Store {
    entries: Vec::new(),
    warnings_and_errors: Vec::new(),
});
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Capture;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "password" {
            // The report is published: a logged password (the first admin's) stays out of it.
            let _ = write!(self.rest, " password=[redacted]");
        } else if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "password" {
            let _ = write!(self.rest, " password=[redacted]");
        } else if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = *meta.level();
        if !meta.target().starts_with("pgshift")
            || !matches!(level, Level::ERROR | Level::WARN | Level::INFO)
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let entry = Entry {
            at: crate::common::started().elapsed().as_secs_f64(),
            level,
            target: meta.target().to_string(),
            text: format!("{}{}", fields.message, fields.rest),
        };
        let mut store = STORE.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(level, Level::ERROR | Level::WARN) {
            store.warnings_and_errors.push(entry.clone());
        }
        if store.entries.len() < KEEP {
            store.entries.push(entry);
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the subscriber (once).
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,pgshift=info,sqlx=error"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(Capture)
        .try_init();
}

/// pgshift's INFO+ entries kept so far, and how many more were only counted.
pub fn entries() -> (Vec<Entry>, usize) {
    let store = STORE.lock().unwrap_or_else(|e| e.into_inner());
    (store.entries.clone(), DROPPED.load(Ordering::Relaxed))
}

/// pgshift's warnings and errors so far.
pub fn warnings_and_errors() -> Vec<Entry> {
    STORE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .warnings_and_errors
        .clone()
}
