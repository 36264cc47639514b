//! Versions and the hybrid logical clock that assigns them.
//!
//! A version is `(ts, node)`: `ts` is a hybrid logical clock value (the high
//! 48 bits are milliseconds since the Unix epoch, the low 16 a counter), and
//! `node` is the id of the master that assigned it, the tie-break. Versions
//! are totally ordered; a master always assigns a version greater than the
//! one it replaces, and its clock never runs backwards, even across restarts
//! (it resumes above the highest version in storage) or when it sees a
//! version from a peer whose clock is ahead (`observe`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A record's version; its `Display` form is the HTTP ETag (without quotes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub ts: u64,
    pub node: String,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.ts, self.node)
    }
}

impl Version {
    /// Parses the ETag form, `<hex clock>-<master id>` (lowercase hex, a
    /// valid node id), bare or in the quotes an entity tag carries. `None`
    /// when malformed.
    pub fn parse_tag(text: &str) -> Option<Version> {
        let inner = match text.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"')?,
            None => text,
        };
        let (ts, node) = inner.split_once('-')?;
        let hex = !ts.is_empty()
            && ts.len() <= 16
            && ts
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || !is_node_id(node) {
            return None;
        }
        Some(Version {
            ts: u64::from_str_radix(ts, 16).ok()?,
            node: node.to_owned(),
        })
    }
}

/// Whether `id` can be a node id: 1 to 64 of `[A-Za-z0-9_.-]` (node ids
/// appear in versions and URLs).
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Bits of a clock value that count events within one millisecond.
const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock: close to wall time, strictly increasing.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

impl Clock {
    /// A clock that will never issue a value at or below `floor`.
    pub fn starting_above(floor: u64) -> Self {
        Clock {
            last: AtomicU64::new(floor),
        }
    }

    /// The next value: greater than every value issued or observed before.
    pub fn tick(&self) -> u64 {
        let now = physical_now();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock forward to at least `ts` (a version seen elsewhere).
    pub fn observe(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }
}

/// Wall time in clock units: milliseconds shifted above the counter bits.
fn physical_now() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms << LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase() {
        let clock = Clock::default();
        let mut prev = clock.tick();
        for _ in 0..100_000 {
            let next = clock.tick();
            assert!(next > prev);
            prev = next;
        }
    }

    #[test]
    fn resumes_above_a_floor_in_the_future() {
        let future = physical_now() + (3_600_000 << LOGICAL_BITS);
        let clock = Clock::starting_above(future);
        assert!(clock.tick() > future);
    }

    #[test]
    fn observing_a_later_version_moves_the_clock() {
        let clock = Clock::default();
        let seen = clock.tick() + (10_000 << LOGICAL_BITS);
        clock.observe(seen);
        assert!(clock.tick() > seen);
        // Observing an older value never moves it back.
        clock.observe(1);
        assert!(clock.tick() > seen);
    }

    #[test]
    fn concurrent_ticks_are_unique() {
        let clock = std::sync::Arc::new(Clock::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.tick()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn versions_order_by_ts_then_node() {
        let a = Version {
            ts: 5,
            node: "b".into(),
        };
        let b = Version {
            ts: 6,
            node: "a".into(),
        };
        let c = Version {
            ts: 6,
            node: "b".into(),
        };
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "6-b");
    }

    #[test]
    fn tags_parse_with_or_without_quotes() {
        let v = Version {
            ts: 0x1a2b,
            node: "n-1".into(),
        };
        for text in ["1a2b-n-1", "\"1a2b-n-1\""] {
            assert_eq!(Version::parse_tag(text), Some(v.clone()), "{text}");
        }
        for bad in [
            "",
            "-n1",
            "1a2b-",
            "1a2b",
            "zz-n1",
            "1A2B-n1",
            "\"1a2b-n1",
            "1a2b-n1\"",
            "W/\"1a2b-n1\"",
            " 1a2b-n1",
            "+1-n1",
            "11111111111111111-n1",
            "1-a\"b",
            "1-n$",
        ] {
            assert_eq!(Version::parse_tag(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_version_parses_back_from_its_tag(ts in proptest::prelude::any::<u64>(), node in "[a-zA-Z0-9._-]{1,64}") {
            let v = Version { ts, node };
            proptest::prop_assert_eq!(Version::parse_tag(&v.to_string()), Some(v.clone()));
            proptest::prop_assert_eq!(Version::parse_tag(&format!("\"{v}\"")), Some(v));
        }
    }
}
