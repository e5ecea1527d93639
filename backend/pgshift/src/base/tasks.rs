//! Foundation layer: the one pattern for background tasks, used three times: the engine's
//! supervisor (one run per migration), the service's operations (one cutover or verification
//! per migration) and the lag sampler. Every task runs on a tokio-util `TaskTracker` with a
//! child of one shutdown `CancellationToken`, under a key that says what it is for; `shutdown`
//! cancels them all and waits for them, boundedly, naming the ones that did not stop.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One keyed task: reserved first (so that no second one starts while the first is being set
/// up), then given its future. `value` says what runs under the key (an operation's id, say).
struct Slot<V> {
    value: V,
    cancel: CancellationToken,
    join: Option<JoinHandle<()>>,
}

impl<V> Slot<V> {
    /// Reserved and not yet started counts as running.
    fn running(&self) -> bool {
        self.join.as_ref().is_none_or(|j| !j.is_finished())
    }
}

/// Tasks by key, at most one running per key.
pub struct TaskSet<K, V = ()> {
    /// What the tasks are, for log lines ("migration run", "operation").
    what: &'static str,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, V> TaskSet<K, V>
where
    K: Eq + Hash + Clone + Display,
    V: Clone,
{
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.slots.lock().expect("task set lock")
    }

    /// Reserves `key` for a new task and returns the token that cancels it, or the value of the
    /// task still running under the key.
    pub fn reserve(&self, key: K, value: V) -> Result<CancellationToken, V> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(&key).filter(|s| s.running()) {
            return Err(slot.value.clone());
        }
        let cancel = self.shutdown.child_token();
        slots.insert(
            key,
            Slot {
                value,
                cancel: cancel.clone(),
                join: None,
            },
        );
        Ok(cancel)
    }

    /// Starts the task reserved under `key`.
    pub fn start(&self, key: &K, task: impl Future<Output = ()> + Send + 'static) {
        let join = self.tracker.spawn(task);
        if let Some(slot) = self.slots().get_mut(key) {
            slot.join = Some(join);
        }
    }

    /// Reserves `key` and starts `task` with its token; `false` (and nothing started) while a
    /// task runs under the key.
    pub fn spawn<F, Fut>(&self, key: K, value: V, task: F) -> bool
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.reserve(key.clone(), value) {
            Ok(cancel) => {
                self.start(&key, task(cancel));
                true
            }
            Err(_) => false,
        }
    }

    /// The token every task's token is a child of: cancelled once `shutdown` begins, for work
    /// outside the tasks that should give up then too.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Gives back a reservation whose task never started.
    pub fn release(&self, key: &K) {
        self.slots().remove(key);
    }

    /// Asks the task running under `key` to stop; its value, if one was running.
    pub fn cancel(&self, key: &K) -> Option<V> {
        let slots = self.slots();
        let slot = slots.get(key).filter(|s| s.running())?;
        slot.cancel.cancel();
        Some(slot.value.clone())
    }

    /// Cancels the task under `key` and waits for it to finish.
    pub async fn stop(&self, key: &K) {
        let slot = self.slots().remove(key);
        if let Some(slot) = slot {
            slot.cancel.cancel();
            if let Some(join) = slot.join {
                if let Err(e) = join.await {
                    tracing::error!(task = %key, error = %e, "a {} panicked", self.what);
                }
            }
        }
    }

    /// Whether a task runs (or is reserved) under `key`.
    pub fn is_running(&self, key: &K) -> bool {
        self.slots().get(key).is_some_and(Slot::running)
    }

    /// The value of the task running (or reserved) under `key`.
    pub fn running(&self, key: &K) -> Option<V> {
        self.slots()
            .get(key)
            .filter(|s| s.running())
            .map(|s| s.value.clone())
    }

    /// Whether a running task's value matches.
    pub fn any_running(&self, matches: impl Fn(&V) -> bool) -> bool {
        self.slots()
            .values()
            .any(|s| s.running() && matches(&s.value))
    }

    /// Cancels every task and waits up to `timeout` for all of them, naming the ones that did
    /// not stop in time.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            for key in self
                .slots()
                .iter()
                .filter(|(_, s)| s.running())
                .map(|(k, _)| k)
            {
                tracing::warn!(task = %key, "{} did not stop in time", self.what);
            }
        }
        self.slots().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_task_per_key_until_it_ends() {
        let set: TaskSet<u32, &str> = TaskSet::new("test task");
        let cancel = set.reserve(1, "first").unwrap();
        assert_eq!(set.reserve(1, "second").unwrap_err(), "first");
        set.start(&1, async move { cancel.cancelled().await });
        assert!(set.is_running(&1));
        assert_eq!(set.running(&1), Some("first"));
        assert_eq!(set.running(&2), None);
        assert!(set.any_running(|v| *v == "first"));
        assert_eq!(set.cancel(&1), Some("first"));
        set.stop(&1).await;
        assert!(!set.is_running(&1));
        assert_eq!(set.running(&1), None);
        assert!(set.spawn(1, "third", |c| async move { c.cancelled().await }));
        // A task that ended by itself holds its key no more (nobody stopped it).
        assert!(set.spawn(4, "quick", |_| async {}));
        while set.is_running(&4) {
            tokio::task::yield_now().await;
        }
        assert_eq!(set.running(&4), None);
        assert!(set.reserve(4, "next").is_ok());
        set.release(&4);
        set.release(&2);
        set.shutdown(Duration::from_secs(5)).await;
        assert!(!set.is_running(&1));
        // After the shutdown a new task starts cancelled.
        assert!(set.spawn(3, "late", |c| async move { c.cancelled().await }));
        set.stop(&3).await;
    }
}
