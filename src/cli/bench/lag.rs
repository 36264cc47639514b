//! Replication lag: how long after a write's acknowledgement every other
//! node serves it.
//!
//! About one acknowledged PUT in 100 (at most 100 a second) becomes a
//! sample. A probe then reads the key with HEAD on every node but the
//! key's master (named by the version in the ETag), on its own small pool
//! of connections (a `client::Endpoint` per node, not the benchmark's),
//! until the node answers with the written ETag or a newer version (a
//! later write to the same key implies this one was applied, since a
//! replica applies a master's feed in order). The sample is the time from
//! the acknowledgement to the answer that showed the last node had it;
//! polls start 1 ms apart and stretch to a tenth of the elapsed time (at
//! most 20 ms), so a sample is within about 10% of the truth. A sample not
//! visible everywhere within 5 s counts as "not visible".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::hist::sorted_quantile;
use crate::client::{self, Endpoint};

/// One write in this many is sampled...
const SAMPLE_EVERY: u64 = 100;
/// ...and samples are at least this far apart (at most 100 a second).
const MIN_SAMPLE_GAP: Duration = Duration::from_millis(10);
/// A sample not visible on every node within this is given up.
pub const VISIBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes in flight at once; samples beyond are skipped.
const MAX_PROBES: usize = 64;
const MAX_POLL_GAP: Duration = Duration::from_millis(20);
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A node the probes read from.
pub struct ProbeNode {
    pub endpoint: Arc<Endpoint>,
    /// Its id, from `/health`; unknown when it could not be reached.
    pub node_id: Option<String>,
}

/// A version as the ETag shows it: `"<hex clock>-<master id>"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Version {
    ts: u64,
    node: String,
}

fn parse_etag(etag: &HeaderValue) -> Option<Version> {
    let text = etag.to_str().ok()?.trim().trim_start_matches("W/");
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let (ts, node) = inner.split_once('-')?;
    Some(Version {
        ts: u64::from_str_radix(ts, 16).ok()?,
        node: node.to_owned(),
    })
}

struct Sample {
    key: String,
    version: Version,
    acked: Instant,
}

/// Takes samples from the connections' hot loops.
pub struct Sampler {
    writes: AtomicU64,
    base: Instant,
    /// Microseconds after `base` of the last sample, plus one (0: none yet).
    last: AtomicU64,
    tx: mpsc::Sender<Sample>,
}

impl Sampler {
    /// Offers an acknowledged write; cheap unless it is picked.
    pub fn offer(&self, key: impl FnOnce() -> String, etag: &HeaderValue, acked: Instant) {
        if !self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SAMPLE_EVERY)
        {
            return;
        }
        let now = acked.saturating_duration_since(self.base).as_micros() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + MIN_SAMPLE_GAP.as_micros() as u64 {
            return;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Some(version) = parse_etag(etag) else {
            return;
        };
        let _ = self.tx.try_send(Sample {
            key: key(),
            version,
            acked,
        });
    }
}

/// What the probes found.
#[derive(Debug, Clone, Default)]
pub struct LagReport {
    /// Samples visible on every other node, sorted.
    pub visible: Vec<Duration>,
    /// Samples not visible everywhere within `VISIBLE_TIMEOUT`.
    pub not_visible: u64,
    /// Samples skipped because `MAX_PROBES` were in flight.
    pub skipped: u64,
}

impl LagReport {
    pub fn samples(&self) -> u64 {
        self.visible.len() as u64 + self.not_visible
    }

    pub fn quantile(&self, q: f64) -> Duration {
        sorted_quantile(&self.visible, q)
    }
}

/// Starts the prober; the sampler goes to the connections, and the handle
/// gives the report once every sampler is dropped and the probes are done.
pub fn start(nodes: Vec<ProbeNode>) -> (Arc<Sampler>, tokio::task::JoinHandle<LagReport>) {
    let (tx, mut rx) = mpsc::channel::<Sample>(1024);
    let sampler = Arc::new(Sampler {
        writes: AtomicU64::new(0),
        base: Instant::now(),
        last: AtomicU64::new(0),
        tx,
    });
    let nodes = Arc::new(nodes);
    let handle = tokio::spawn(async move {
        let mut report = LagReport::default();
        let limit = Arc::new(Semaphore::new(MAX_PROBES));
        let mut probes: JoinSet<Option<Duration>> = JoinSet::new();
        let count = |report: &mut LagReport, r: Option<Duration>| match r {
            Some(d) => report.visible.push(d),
            None => report.not_visible += 1,
        };
        loop {
            tokio::select! {
                sample = rx.recv() => match sample {
                    Some(sample) => match limit.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let nodes = nodes.clone();
                            probes.spawn(async move {
                                let r = probe(&nodes, sample).await;
                                drop(permit);
                                r
                            });
                        }
                        Err(_) => report.skipped += 1,
                    },
                    None => break,
                },
                Some(done) = probes.join_next(), if !probes.is_empty() => {
                    count(&mut report, done.ok().flatten());
                }
            }
        }
        while let Some(done) = probes.join_next().await {
            count(&mut report, done.ok().flatten());
        }
        report.visible.sort();
        report
    });
    (sampler, handle)
}

/// Polls every node but the master until each serves the sample's version
/// or a newer one; the time from the acknowledgement, or `None` after
/// `VISIBLE_TIMEOUT`.
async fn probe(nodes: &[ProbeNode], sample: Sample) -> Option<Duration> {
    let master_known = nodes
        .iter()
        .any(|n| n.node_id.as_deref() == Some(sample.version.node.as_str()));
    let path = client::kv_path(&sample.key);
    for node in nodes {
        if master_known && node.node_id.as_deref() == Some(sample.version.node.as_str()) {
            continue;
        }
        loop {
            if has(node, &path, &sample.version).await {
                break;
            }
            let waited = sample.acked.elapsed();
            if waited >= VISIBLE_TIMEOUT {
                return None;
            }
            let gap = (Duration::from_millis(1) + waited / 10).min(MAX_POLL_GAP);
            tokio::time::sleep(gap).await;
        }
    }
    Some(sample.acked.elapsed())
}

/// Whether `node` serves `version` (or newer) for the key at `path`.
async fn has(node: &ProbeNode, path: &str, version: &Version) -> bool {
    let Ok(req) = client::request(Method::HEAD, path, &[], Bytes::new()) else {
        return false;
    };
    match node.endpoint.send(req, PROBE_REQUEST_TIMEOUT).await {
        Ok(reply) if reply.status == hyper::StatusCode::OK => reply
            .headers
            .get(hyper::header::ETAG)
            .and_then(parse_etag)
            .is_some_and(|v| v >= *version),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse_and_order() {
        let a = parse_etag(&HeaderValue::from_static("\"1a21a40d69f0000-n1\"")).unwrap();
        assert_eq!(a.ts, 0x1a21a40d69f0000);
        assert_eq!(a.node, "n1");
        let b = parse_etag(&HeaderValue::from_static("\"1a21a40d69f0001-n-0\"")).unwrap();
        assert_eq!(b.node, "n-0");
        assert!(b > a);
        assert!(parse_etag(&HeaderValue::from_static("1a2-n1")).is_none());
        assert!(parse_etag(&HeaderValue::from_static("\"zz-n1\"")).is_none());
    }
}
