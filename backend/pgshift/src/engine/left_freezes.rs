//! Engine layer: the freezes a stopped cutover could not lift (the source was unreachable, or a
//! lock held it back). The migration's run lifts such a freeze at the start of every attempt;
//! until it has, every error the run reports says that the source is still frozen, so the
//! dashboard, the API and the log all show it rather than an ordinary connection error.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{EngineError, EngineResult};

/// Per migration, why its source's freeze is still in place.
#[derive(Default)]
pub struct LeftFreezes {
    left: Mutex<HashMap<Uuid, String>>,
}

const STILL_FROZEN: &str = "the source is still frozen";

impl LeftFreezes {
    /// A cutover of `migration` stopped and could not lift its freeze, for `why`.
    pub fn note(&self, migration: Uuid, why: &str) {
        self.left
            .lock()
            .expect("left freezes lock")
            .insert(migration, why.to_string());
    }

    /// The freeze of `migration` is gone (lifted, or none was found).
    pub fn clear(&self, migration: Uuid) {
        self.left
            .lock()
            .expect("left freezes lock")
            .remove(&migration);
    }

    /// Whether a freeze of `migration` is known to be left in place.
    pub fn is_left(&self, migration: Uuid) -> bool {
        self.left
            .lock()
            .expect("left freezes lock")
            .contains_key(&migration)
    }

    /// `error` as the run reports it: saying first that the source is still frozen, when it is.
    pub fn describe(&self, migration: Uuid, error: String) -> String {
        if self.is_left(migration) && !error.starts_with(STILL_FROZEN) {
            format!("{STILL_FROZEN} (pgshift lifts it once it can): {error}")
        } else {
            error
        }
    }

    /// Waits, until cancelled, for a freeze of `migration` to be left behind; then fails, which
    /// ends the run's attempt so that the next one lifts it.
    pub async fn watch(&self, migration: Uuid, cancel: CancellationToken) -> EngineResult<()> {
        loop {
            if self.is_left(migration) {
                return Err(EngineError::invalid(
                    "source_frozen",
                    "a stopped cutover left the source frozen: lifting it",
                ));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// The error of a failed attempt to lift the freeze.
    pub fn lift_failed(detail: &str) -> String {
        format!("{STILL_FROZEN}: {detail}; pgshift keeps trying to lift it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_the_source_is_frozen_only_while_it_is() {
        let left = LeftFreezes::default();
        let id = Uuid::new_v4();
        assert_eq!(
            left.describe(id, "cannot reach the source".into()),
            "cannot reach the source"
        );
        left.note(id, "connection refused");
        let shown = left.describe(id, "cannot reach the source".into());
        assert!(shown.starts_with("the source is still frozen"), "{shown}");
        let lifted = LeftFreezes::lift_failed("lock timeout");
        assert_eq!(left.describe(id, lifted.clone()), lifted);
        left.clear(id);
        assert!(!left.is_left(id));
    }
}
