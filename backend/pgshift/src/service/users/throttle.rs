//! Service layer: the sign-in gate, in memory: failed attempts counted per user name and per
//! client address, and password hashing on a few threads fed by a bounded queue, so that a flood
//! of sign-ins neither guesses passwords nor grows memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What the throttle counts attempts against: a user name (by its SHA-256, so a key's size does
/// not depend on what a client sends) or a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    User([u8; 32]),
    Addr(IpAddr),
}

impl ThrottleKey {
    /// Attempts allowed per window: an address gets more tries than one name, as several
    /// people may sign in from behind it.
    fn limit(self) -> u32 {
        match self {
            ThrottleKey::User(_) => SignInThrottle::MAX_FAILURES,
            ThrottleKey::Addr(_) => SignInThrottle::MAX_FAILURES * 4,
        }
    }
}

#[derive(Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
}

/// The attempts a sign-in reserved; given back when it succeeds or never ran its check.
pub struct Reservation {
    user: ThrottleKey,
    addr: Option<ThrottleKey>,
}

/// The sign-in gate, in memory:
///
/// - Attempts per user name and per client address: each attempt is counted, atomically, before
///   any password is hashed, and given back when it succeeds; after [`Self::MAX_FAILURES`] within
///   [`Self::WINDOW`] (four times that for an address) further attempts are refused until the
///   window ends. The table holds at most [`Self::MAX_KEYS`] keys: expired ones go first, then
///   the oldest.
/// - Password hashing (argon2id, 19 MiB each): at most [`Self::HASHERS`] at once, at most
///   [`Self::QUEUED`] more waiting (each at most [`Self::QUEUE_WAIT`]); beyond that a sign-in is
///   refused at once as busy. Memory stays bounded however many requests arrive.
pub struct SignInThrottle {
    strikes: Mutex<HashMap<ThrottleKey, Strikes>>,
    hashers: Hashers,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self {
            strikes: Mutex::new(HashMap::new()),
            hashers: Hashers::start(Self::HASHERS, Self::QUEUED),
        }
    }
}

type HashJob = Box<dyn FnOnce(&mut Vec<argon2::Block>) + Send>;

/// A fixed set of threads that compute password hashes, fed by a bounded queue. Each thread
/// keeps its own argon2 memory (19 MiB) and reuses it for every hash: allocating it anew per hash
/// on tokio's blocking pool, which grows to hundreds of threads under a flood, left the
/// allocator holding gigabytes. They end when the queue's sender (the throttle) is dropped.
struct Hashers {
    queue: std::sync::mpsc::SyncSender<HashJob>,
}

impl Hashers {
    fn start(threads: usize, queued: usize) -> Self {
        let (queue, jobs) = std::sync::mpsc::sync_channel::<HashJob>(queued);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pgshift-hash-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
            }
        }
        Self { queue }
    }
}

impl SignInThrottle {
    pub const MAX_FAILURES: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
    pub const MAX_KEYS: usize = 10_000;
    /// Password hashes computed at once.
    pub const HASHERS: usize = 2;
    /// Sign-ins waiting for a hashing thread; more are refused at once.
    pub const QUEUED: usize = 16;
    /// The longest a sign-in waits for its hash, queue included.
    pub const HASH_WAIT: Duration = Duration::from_secs(10);
    /// `Retry-After` of a sign-in refused as busy.
    pub const BUSY_RETRY_SECS: u64 = 2;

    fn user_key(name: &str) -> ThrottleKey {
        ThrottleKey::User(Sha256::digest(name.to_lowercase().as_bytes()).into())
    }

    /// Counts one attempt for `name` from `ip`, or says for how many seconds they are refused.
    /// Check and count happen under one lock: concurrent attempts cannot all pass the check.
    pub fn reserve(&self, name: &str, ip: Option<IpAddr>) -> Result<Reservation, u64> {
        let reservation = Reservation {
            user: Self::user_key(name),
            addr: ip.map(ThrottleKey::Addr),
        };
        let keys: Vec<ThrottleKey> = std::iter::once(reservation.user)
            .chain(reservation.addr)
            .collect();
        let mut strikes = self.strikes.lock().expect("throttle lock");
        let now = Instant::now();
        let blocked = keys
            .iter()
            .filter_map(|k| strikes.get(k).map(|s| (k, s)))
            .filter(|(k, s)| s.count >= k.limit() && now.duration_since(s.since) < Self::WINDOW)
            .map(|(_, s)| {
                (Self::WINDOW - now.duration_since(s.since))
                    .as_secs()
                    .max(1)
            })
            .max();
        if let Some(secs) = blocked {
            return Err(secs);
        }
        Self::make_room(&mut strikes, now, keys.len());
        for key in keys {
            let entry = strikes.entry(key).or_insert(Strikes {
                count: 0,
                since: now,
            });
            if now.duration_since(entry.since) >= Self::WINDOW {
                *entry = Strikes {
                    count: 0,
                    since: now,
                };
            }
            entry.count += 1;
        }
        Ok(reservation)
    }

    /// Keeps the table under [`Self::MAX_KEYS`]: drops expired keys, then the oldest tenth.
    fn make_room(strikes: &mut HashMap<ThrottleKey, Strikes>, now: Instant, adding: usize) {
        if strikes.len() + adding <= Self::MAX_KEYS {
            return;
        }
        strikes.retain(|_, s| now.duration_since(s.since) < Self::WINDOW);
        if strikes.len() + adding <= Self::MAX_KEYS {
            return;
        }
        let mut ages: Vec<(Instant, ThrottleKey)> =
            strikes.iter().map(|(k, s)| (s.since, *k)).collect();
        let evict = (strikes.len() + adding - Self::MAX_KEYS)
            .max(Self::MAX_KEYS / 10)
            .min(ages.len());
        if evict == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(evict - 1, |(since, _)| *since);
        for (_, key) in &ages[..evict] {
            strikes.remove(key);
        }
        tracing::warn!(
            evicted = evict,
            "sign-in throttle full: forgot the oldest failed attempts"
        );
    }

    /// Gives the attempt back: it never reached the password check.
    pub(super) fn refund(&self, r: &Reservation) {
        let mut strikes = self.strikes.lock().expect("throttle lock");
        for key in std::iter::once(r.user).chain(r.addr) {
            if let Some(s) = strikes.get_mut(&key) {
                s.count = s.count.saturating_sub(1);
            }
        }
    }

    /// A correct password: the name's failures are forgotten, the address's attempt given back.
    pub(super) fn succeeded(&self, r: &Reservation) {
        let mut strikes = self.strikes.lock().expect("throttle lock");
        strikes.remove(&r.user);
        if let Some(s) = r.addr.and_then(|a| strikes.get_mut(&a)) {
            s.count = s.count.saturating_sub(1);
        }
    }

    /// Keys in the table now (tests check the cap).
    pub fn len(&self) -> usize {
        self.strikes.lock().expect("throttle lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` (a password hash) on one of the hashing threads; `None` when the queue is full
    /// or the answer takes longer than [`Self::HASH_WAIT`]. A job whose caller stopped waiting
    /// before it started is skipped.
    pub(super) async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<argon2::Block>) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move |memory| {
            if !tx.is_closed() {
                let _ = tx.send(f(memory));
            }
        });
        self.hashers.queue.try_send(job).ok()?;
        tokio::time::timeout(Self::HASH_WAIT, rx).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_each_attempt_before_it_runs() {
        let t = SignInThrottle::default();
        let ip = Some("10.1.2.3".parse().unwrap());
        for _ in 0..SignInThrottle::MAX_FAILURES {
            t.reserve("Alice", ip).expect("within the limit");
        }
        assert!(t.reserve("alice", None).is_err());
        assert!(t.reserve("bob", None).is_ok());
        // The address has more strikes than the name: another user there may still try.
        assert!(t.reserve("carol", ip).is_ok());
        // A success forgets the name's failures.
        let r = t.reserve("dave", ip).unwrap();
        t.succeeded(&r);
        for _ in 0..SignInThrottle::MAX_FAILURES {
            t.reserve("dave", None).unwrap();
        }
    }

    #[test]
    fn throttle_table_has_a_size_cap() {
        let t = SignInThrottle::default();
        for i in 0..(SignInThrottle::MAX_KEYS * 3) {
            let _ = t.reserve(&format!("user-{i}-{}", "x".repeat(1000)), None);
        }
        assert!(t.len() <= SignInThrottle::MAX_KEYS, "{}", t.len());
        // The newest keys are the ones kept.
        let last = format!(
            "user-{}-{}",
            SignInThrottle::MAX_KEYS * 3 - 1,
            "x".repeat(1000)
        );
        for _ in 1..SignInThrottle::MAX_FAILURES {
            t.reserve(&last, None).unwrap();
        }
        assert!(t.reserve(&last, None).is_err());
    }

    #[tokio::test]
    async fn at_most_a_few_hashes_run_at_once_and_the_queue_is_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t = Arc::new(SignInThrottle::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..100).map(|_| {
            let (t, running, most) = (t.clone(), running.clone(), most.clone());
            async move {
                t.hashing(move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }
        });
        let done = futures_util::future::join_all(calls).await;
        let ran = done.iter().filter(|d| d.is_some()).count();
        assert!(most.load(Ordering::SeqCst) <= SignInThrottle::HASHERS);
        assert!(ran >= 1, "nothing ran");
        assert!(
            ran <= SignInThrottle::HASHERS + SignInThrottle::QUEUED,
            "{ran} of 100 ran: the queue is not bounded"
        );
    }
}
