//! A log-linear latency histogram: exact below 256 ns, then 128 buckets per
//! power of two, so any recorded value is known within 0.8%. Memory stays
//! bounded however long the run (a few KiB per histogram), each connection
//! keeps its own, and they are added together at the end.

use std::time::Duration;

/// Buckets per power of two (and the exact range below `2 * SUB`).
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

/// The bucket of a value in nanoseconds.
fn bucket(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2 * SUB)
    (shift as u64 * SUB + mantissa) as usize
}

/// The lowest and highest value a bucket holds.
fn bounds(b: usize) -> (u64, u64) {
    let b = b as u64;
    if b < 2 * SUB {
        return (b, b);
    }
    let shift = b / SUB - 1;
    let mantissa = b % SUB + SUB;
    let low = mantissa << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let b = bucket(v);
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        if self.count == 0 || v < self.min_ns {
            self.min_ns = v;
        }
        self.max_ns = self.max_ns.max(v);
        self.count += 1;
        self.sum_ns += v as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        if self.count == 0 || other.min_ns < self.min_ns {
            self.min_ns = other.min_ns;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
        self.sum_ns += other.sum_ns;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((self.sum_ns / self.count as u128) as u64)
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value with
    /// at least `q` of all values at or below it, within the bucket width.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if q >= 1.0 {
            return self.max();
        }
        let rank = ((q.max(0.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bounds(b);
                let mid = low + (high - low) / 2;
                return Duration::from_nanos(mid.clamp(self.min_ns, self.max_ns));
            }
        }
        self.max()
    }
}

/// The value at quantile `q` of a sorted slice (nearest rank).
pub fn sorted_quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut last = None;
        for v in (0..5000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX]) {
            let b = bucket(v);
            let (low, high) = bounds(b);
            assert!(
                low <= v && v <= high,
                "{v} not in bucket {b} = {low}..={high}"
            );
            assert!(high - low <= low / 64 + 1, "bucket {b} too wide");
            if let Some((lv, lb)) = last {
                if v == lv + 1 {
                    assert!(b == lb || b == lb + 1, "gap after bucket {lb}");
                }
            }
            last = Some((v, b));
        }
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        let mut exact = Vec::new();
        for i in 1..=10_000u64 {
            let d = Duration::from_nanos(i * i * 37 % 9_999_991 + 1000);
            h.record(d);
            exact.push(d);
        }
        exact.sort();
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = sorted_quantile(&exact, q).as_nanos() as f64;
            let got = h.quantile(q).as_nanos() as f64;
            assert!((got - want).abs() <= want * 0.01, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), *exact.last().unwrap());
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for i in 0..100 {
            a.record(Duration::from_micros(i));
            b.record(Duration::from_micros(1000 + i));
        }
        a.merge(&b);
        assert_eq!(a.count(), 200);
        assert_eq!(a.max(), Duration::from_micros(1099));
        let median = a.quantile(0.5).as_micros();
        assert!((98..=100).contains(&median), "{median}");
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }
}
