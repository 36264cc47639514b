//! Readers waiting for a key to change: what a blocking read
//! (`GET /v1/kv/{key}?min_version=...`) waits on.
//!
//! A reader registers the key before it reads, then waits for a wake-up;
//! every write that makes a record visible on this node (a local write, a
//! record pulled from a peer's feed or repaired) wakes the readers of its
//! key. Keys are registered by hash: two keys that share one only cause a
//! spurious wake-up, after which the reader looks again. With no reader
//! registered, a local write pays one atomic load, and a batch pulled from
//! a peer a hash of each key (taken before it is stored, since a reader
//! may register meanwhile) and one atomic load.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The keys readers wait on.
#[derive(Default)]
pub struct Watchers {
    /// Readers registered: writers skip the map while it is 0.
    readers: AtomicUsize,
    /// Per key hash: what its readers wait on, and how many they are.
    keys: Mutex<HashMap<u64, (Arc<Notify>, usize)>>,
    hasher: foldhash::fast::FixedState,
}

impl Watchers {
    /// The hash writers give `changed` for `key`.
    pub fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Whether any reader waits: writers compute hashes only then.
    pub fn any(&self) -> bool {
        // Orders the caller's write (made visible before this call)
        // before the load: with `watch`'s SeqCst increment, either this
        // sees the reader, or the reader's read sees the write.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.readers.load(Ordering::SeqCst) > 0
    }

    /// Registers a reader of `key` until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>, key: &str) -> KeyWatch {
        let hash = self.hash(key);
        // Counted before the map holds it, so a writer that finds the
        // count at 0 made its record visible before this reader's read.
        self.readers.fetch_add(1, Ordering::SeqCst);
        let notify = {
            let mut keys = self.lock();
            let (notify, readers) = keys.entry(hash).or_default();
            *readers += 1;
            notify.clone()
        };
        KeyWatch {
            watchers: self.clone(),
            hash,
            notify,
        }
    }

    /// Wakes the readers of the keys with these hashes.
    pub fn changed(&self, hashes: impl IntoIterator<Item = u64>) {
        if !self.any() {
            return;
        }
        let keys = self.lock();
        for hash in hashes {
            if let Some((notify, _)) = keys.get(&hash) {
                notify.notify_waiters();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<Notify>, usize)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One reader's registration.
pub struct KeyWatch {
    watchers: Arc<Watchers>,
    hash: u64,
    notify: Arc<Notify>,
}

impl KeyWatch {
    /// What to wait on. Create it, `enable` it, then read: a write that
    /// lands after the read wakes it.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut keys = self.watchers.lock();
        // The last reader of the key removes it.
        if let std::collections::hash_map::Entry::Occupied(mut e) = keys.entry(self.hash) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                e.remove();
            }
        }
        drop(keys);
        self.watchers.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_wakes_the_readers_of_its_key_only() {
        let w = Arc::new(Watchers::default());
        let a = w.watch("a");
        let b = w.watch("b");
        let wait_a = a.notified();
        let wait_b = b.notified();
        tokio::pin!(wait_a, wait_b);
        wait_a.as_mut().enable();
        wait_b.as_mut().enable();
        w.changed([w.hash("a")]);
        tokio::time::timeout(Duration::from_secs(1), wait_a)
            .await
            .expect("the reader of a is woken");
        assert!(tokio::time::timeout(Duration::from_millis(20), wait_b)
            .await
            .is_err());
    }

    #[test]
    fn readers_dropped_on_two_threads_at_once_leave_nothing_behind() {
        let w = Arc::new(Watchers::default());
        for _ in 0..200 {
            let watches: Vec<_> = (0..4).map(|_| w.watch("k")).collect();
            std::thread::scope(|s| {
                for watch in watches {
                    s.spawn(move || drop(watch));
                }
            });
            assert!(w.lock().is_empty());
            assert!(!w.any());
        }
    }

    #[test]
    fn the_last_reader_of_a_key_removes_it() {
        let w = Arc::new(Watchers::default());
        let one = w.watch("k");
        let two = w.watch("k");
        assert!(w.any());
        drop(one);
        assert_eq!(w.lock().len(), 1);
        drop(two);
        assert!(w.lock().is_empty());
        assert!(!w.any());
    }
}
