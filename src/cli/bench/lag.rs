//! Replication lag: how long after a write's acknowledgement every other
//! node serves it.
//!
//! About one acknowledged PUT in 100 (at most 100 a second) becomes a
//! sample. A probe then sends a blocking read (`HEAD` with `min_version=`
//! the written ETag) to every node but the key's master (named by the
//! version in the ETag) at once, on its own small pool of connections (a
//! `client::Endpoint` per node, not the benchmark's). A node answers as
//! soon as it holds that version or a newer one (a later write to the same
//! key implies this one was applied, since a replica applies a master's
//! feed in order). The sample is the time from the acknowledgement to the
//! last of those answers. A sample not visible everywhere within 5 s
//! counts as "not visible".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::hist::sorted_quantile;
use crate::client::{self, Endpoint};
use crate::http::keypath;
use crate::node::version::Version;

/// One write in this many is sampled...
const SAMPLE_EVERY: u64 = 100;
/// ...and samples are at least this far apart (at most 100 a second).
const MIN_SAMPLE_GAP: Duration = Duration::from_millis(10);
/// A sample not visible on every node within this is given up.
pub const VISIBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes in flight at once; samples beyond are skipped.
const MAX_PROBES: usize = 64;
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A node the probes read from.
pub struct ProbeNode {
    pub endpoint: Arc<Endpoint>,
    /// Its id, from `/health`; unknown when it could not be reached.
    pub node_id: Option<String>,
}

/// The version an `ETag` header shows: `"<hex clock>-<master id>"`, quoted.
fn parse_etag(etag: &HeaderValue) -> Option<Version> {
    let text = etag.to_str().ok()?.trim().trim_start_matches("W/");
    text.starts_with('"').then(|| Version::parse_tag(text))?
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

/// Asks every node but the master, at once, to answer when it holds the
/// sample's version or a newer one (a blocking read); the time from the
/// acknowledgement to the last answer, or `None` when a node did not have
/// it within `VISIBLE_TIMEOUT`.
async fn probe(nodes: &Arc<Vec<ProbeNode>>, sample: Sample) -> Option<Duration> {
    let master_known = nodes
        .iter()
        .any(|n| n.node_id.as_deref() == Some(sample.version.node.as_str()));
    let tag = sample.version.to_string();
    let path = format!(
        "{}?min_version={}&wait_ms=",
        client::kv_path(&sample.key),
        keypath::encode_query(&tag)
    );
    let acked = sample.acked;
    let mut waits = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        if master_known && node.node_id.as_deref() == Some(sample.version.node.as_str()) {
            continue;
        }
        let (nodes, path) = (nodes.clone(), path.clone());
        waits.spawn(async move { reached(&nodes[i], &path, acked).await });
    }
    let mut last = acked;
    while let Some(answer) = waits.join_next().await {
        last = last.max(answer.ok().flatten()?);
    }
    Some(last - acked)
}

/// When `node` answered that it holds the version: the blocking read at
/// `path` (which ends in `wait_ms=`) is asked again after a refused
/// connection or a 503, backing off, until `VISIBLE_TIMEOUT` after
/// `acked`; any other answer ends it.
async fn reached(node: &ProbeNode, path: &str, acked: Instant) -> Option<Instant> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let left = VISIBLE_TIMEOUT.checked_sub(acked.elapsed())?;
        let wait_ms = left.as_millis().max(1);
        let req =
            client::request(Method::HEAD, &format!("{path}{wait_ms}"), &[], Bytes::new()).ok()?;
        match node.endpoint.send(req, left + PROBE_REQUEST_TIMEOUT).await {
            // 404: a later version deleted the key, so this one was applied.
            Ok(reply)
                if reply.status == StatusCode::OK || reply.status == StatusCode::NOT_FOUND =>
            {
                return Some(Instant::now())
            }
            Ok(reply) if reply.status != StatusCode::SERVICE_UNAVAILABLE => return None,
            // Overloaded, or no connection: ask again shortly.
            _ => {
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
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
