//! One benchmark connection's task: preloads its share of the key space,
//! then issues operations back to back (or on its slice of `--rate`)
//! until the run ends, keeping its own counters and histograms so the hot
//! loop shares nothing but a few relaxed atomic counters for the progress
//! line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::conn::{self, Answer, Conn, Failure, Target};
use super::hist::Histogram;
use super::lag::Sampler;
use super::Workload;
use crate::cli::rng::Rng;

/// Backoff after a failed connect, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A preloading connection that fails to connect this many times in a row
/// leaves the rest of the key space to the others.
const PRELOAD_CONNECT_ATTEMPTS: u32 = 3;

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get = 0,
    Put = 1,
    Delete = 2,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Get, Op::Put, Op::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Delete => "DELETE",
        }
    }
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    Ok,
    /// GET or DELETE of an absent key (404).
    Miss,
    /// An answer with an unexpected status.
    Status(u16),
    Failed(Failure),
}

/// One operation's counters.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub ok: u64,
    pub misses: u64,
    pub errors: u64,
    /// Latency of every request that got an HTTP answer.
    pub latency: Histogram,
}

impl OpStats {
    pub fn requests(&self) -> u64 {
        self.ok + self.misses + self.errors
    }
}

/// Counters of one connection, or of all of them once merged.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: [OpStats; 3],
    pub by_status: BTreeMap<u16, u64>,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// The first message seen for each status or kind.
    pub examples: BTreeMap<String, String>,
}

impl Stats {
    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.ok += theirs.ok;
            mine.misses += theirs.misses;
            mine.errors += theirs.errors;
            mine.latency.merge(&theirs.latency);
        }
        for (s, n) in &other.by_status {
            *self.by_status.entry(*s).or_default() += n;
        }
        for (k, n) in &other.by_kind {
            *self.by_kind.entry(k).or_default() += n;
        }
        for (k, m) in &other.examples {
            self.examples.entry(k.clone()).or_insert_with(|| m.clone());
        }
    }

    pub fn total(&self) -> OpStats {
        let mut all = OpStats::default();
        for o in &self.ops {
            all.ok += o.ok;
            all.misses += o.misses;
            all.errors += o.errors;
            all.latency.merge(&o.latency);
        }
        all
    }

    /// Counts one outcome; the latency when it got an answer.
    fn record(&mut self, op: Op, outcome: &Outcome, latency: Duration, answer: Option<&Answer>) {
        let o = &mut self.ops[op as usize];
        match outcome {
            Outcome::Ok => o.ok += 1,
            Outcome::Miss => o.misses += 1,
            Outcome::Status(s) => {
                o.errors += 1;
                *self.by_status.entry(*s).or_default() += 1;
                self.examples.entry(s.to_string()).or_insert_with(|| {
                    let text = answer.map(|a| error_text(&a.body)).unwrap_or_default();
                    format!("{} {}: {text}", op.name(), s)
                });
            }
            Outcome::Failed(f) => {
                o.errors += 1;
                *self.by_kind.entry(f.kind()).or_default() += 1;
                self.examples
                    .entry(f.kind().to_owned())
                    .or_insert_with(|| f.message());
            }
        }
        if !matches!(outcome, Outcome::Failed(_)) {
            o.latency.record(latency);
        }
    }
}

/// The message of a JSON error body, or the body as text, shortened.
fn error_text(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// Counters every connection bumps, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub preloaded: AtomicU64,
    pub preload_errors: AtomicU64,
    pub warmup_ops: AtomicU64,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    /// Set by Ctrl-C: every connection stops after its current request.
    pub stop: AtomicBool,
    pub stop_notify: Notify,
}

impl Live {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What every connection shares, read-only.
pub struct Shared {
    pub workload: Workload,
    pub read_ratio: f64,
    pub keys: u64,
    /// The key prefix, percent-encoded for the path.
    pub path_prefix: String,
    pub key_prefix: String,
    pub value_size: usize,
    pub connections: usize,
    /// The key number of the next delete.
    pub next_delete: AtomicU64,
    /// Random bytes; each value is a slice of it at a random offset.
    pub values: Bytes,
    pub timeout: Duration,
    pub live: Arc<Live>,
}

impl Shared {
    pub fn key(&self, n: u64) -> String {
        format!("{}{n:08}", self.key_prefix)
    }

    fn path(&self, n: u64) -> String {
        format!("/v1/kv/{}{n:08}", self.path_prefix)
    }
}

/// When the measured part of a run starts and ends.
#[derive(Clone)]
pub struct Timeline {
    /// Start of the warmup (the run, when there is none).
    pub start: Instant,
    /// Requests sent from here on are counted.
    pub measure: Instant,
    /// The end of a `--duration` run.
    pub end: Option<Instant>,
    /// The op count of a `--requests` run: each counted request takes a
    /// ticket.
    pub tickets: Option<(Arc<AtomicU64>, u64)>,
    /// The interval between two requests of one connection, with `--rate`.
    pub pace: Option<Duration>,
    /// Lag sampling, with several nodes and a workload that writes.
    pub sampler: Option<Arc<Sampler>>,
}

/// One connection's task state; it survives from preload to run.
pub struct Worker {
    pub index: usize,
    target: Target,
    conn: Option<Conn>,
    rng: Rng,
    backoff: Duration,
    pub stats: Stats,
    pub preload_stats: Stats,
    /// When its last counted request finished.
    pub last_done: Option<Instant>,
}

impl Worker {
    pub fn new(index: usize, target: Target, seed: u64) -> Worker {
        Worker {
            index,
            target,
            conn: None,
            rng: Rng::new(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
            backoff: MIN_BACKOFF,
            stats: Stats::default(),
            preload_stats: Stats::default(),
            last_done: None,
        }
    }

    /// Writes keys taken from `next` until the key space is done.
    pub async fn preload(mut self, sh: Arc<Shared>, next: Arc<AtomicU64>) -> Worker {
        let mut connect_failures = 0;
        while !sh.live.stopped() {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= sh.keys {
                break;
            }
            let start = Instant::now();
            let (outcome, answer) = self.exchange(&sh, Op::Put, n).await;
            let ok = matches!(outcome, Outcome::Ok);
            if !ok {
                sh.live.preload_errors.fetch_add(1, Ordering::Relaxed);
            }
            let connect_failed = matches!(outcome, Outcome::Failed(Failure::Connect(_)));
            self.preload_stats
                .record(Op::Put, &outcome, start.elapsed(), answer.as_ref());
            sh.live.preloaded.fetch_add(1, Ordering::Relaxed);
            if connect_failed {
                connect_failures += 1;
                if connect_failures >= PRELOAD_CONNECT_ATTEMPTS {
                    break;
                }
                self.back_off(&sh.live, None).await;
            } else {
                connect_failures = 0;
            }
        }
        self
    }

    /// Opens the connection ahead of the first request, so that the first
    /// measured request does not pay for it; a failure is left for the
    /// first request to meet and count.
    pub async fn connect(mut self, timeout: Duration) -> Worker {
        let timeout = timeout.min(CONNECT_TIMEOUT);
        if let Ok(Ok(conn)) = tokio::time::timeout(timeout, Conn::open(&self.target)).await {
            self.conn = Some(conn);
        }
        self
    }

    /// The run: warmup, then counted requests until the end.
    pub async fn run(mut self, sh: Arc<Shared>, tl: Timeline) -> Worker {
        // With --rate, connections start staggered over one interval.
        let mut next_send = tl
            .pace
            .map(|iv| tl.start + iv.mul_f64(self.index as f64 / sh.connections as f64));
        loop {
            if sh.live.stopped() {
                break;
            }
            // `due`: when the request should go, which decides whether it
            // counts; `start`: where its latency counts from. Behind
            // schedule (the previous answer came late), latency counts from
            // when it was due, so the wait the slow answer caused is not
            // hidden (coordinated omission). Ahead of it, the request waits
            // on a timer of about 1 ms granularity and latency counts from
            // the actual send, so the timer's lateness is not counted.
            let (due, start) = match (next_send, tl.pace) {
                (Some(at), Some(iv)) => {
                    if tl.end.is_some_and(|end| at >= end) {
                        break;
                    }
                    next_send = Some(at + iv);
                    if at > Instant::now() {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = sh.live.stop_notify.notified() => break,
                        }
                        (at, Instant::now())
                    } else {
                        (at, at)
                    }
                }
                _ => {
                    let now = Instant::now();
                    (now, now)
                }
            };
            if tl.end.is_some_and(|end| Instant::now() >= end) {
                break;
            }
            let measuring = due >= tl.measure;
            if measuring {
                if let Some((tickets, limit)) = &tl.tickets {
                    if tickets.fetch_add(1, Ordering::Relaxed) >= *limit {
                        break;
                    }
                }
            }
            let (op, n) = self.choose(&sh);
            let (outcome, answer) = self.exchange(&sh, op, n).await;
            let done = Instant::now();
            if measuring {
                let failed = !matches!(outcome, Outcome::Ok | Outcome::Miss);
                self.stats
                    .record(op, &outcome, done - start, answer.as_ref());
                self.last_done = Some(done);
                sh.live.ops.fetch_add(1, Ordering::Relaxed);
                if failed {
                    sh.live.errors.fetch_add(1, Ordering::Relaxed);
                }
                if let (Outcome::Ok, Op::Put, Some(sampler)) = (&outcome, op, &tl.sampler) {
                    if let Some(etag) = answer.as_ref().and_then(|a| a.etag.as_ref()) {
                        sampler.offer(|| sh.key(n), etag, done);
                    }
                }
            } else {
                sh.live.warmup_ops.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(outcome, Outcome::Failed(Failure::Connect(_))) {
                self.back_off(&sh.live, tl.end).await;
            }
        }
        self
    }

    /// The next operation and key number.
    fn choose(&mut self, sh: &Shared) -> (Op, u64) {
        let op = match sh.workload {
            Workload::Get => Op::Get,
            Workload::Put => Op::Put,
            Workload::Delete => Op::Delete,
            Workload::Mixed => {
                if self.rng.unit() < sh.read_ratio {
                    Op::Get
                } else {
                    Op::Put
                }
            }
        };
        let n = if op == Op::Delete {
            // Deletes walk the key space in order, so after --preload every
            // delete finds its key until all are gone.
            sh.next_delete.fetch_add(1, Ordering::Relaxed) % sh.keys
        } else {
            self.rng.below(sh.keys)
        };
        (op, n)
    }

    /// Sends one request on this connection, connecting first if needed;
    /// a connection that failed is dropped and the next request reconnects.
    async fn exchange(&mut self, sh: &Shared, op: Op, n: u64) -> (Outcome, Option<Answer>) {
        let body = if op == Op::Put {
            let spare = (sh.values.len() - sh.value_size) as u64;
            let at = self.rng.below(spare + 1) as usize;
            sh.values.slice(at..at + sh.value_size)
        } else {
            Bytes::new()
        };
        let req = conn::Request {
            method: op.method(),
            path: sh.path(n),
            body,
        };
        let result = tokio::time::timeout(sh.timeout, self.send(&req)).await;
        let answer = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(f)) => {
                self.conn = None;
                return (Outcome::Failed(f), None);
            }
            Err(_) => {
                self.conn = None;
                return (Outcome::Failed(Failure::Timeout), None);
            }
        };
        self.backoff = MIN_BACKOFF;
        let outcome = match (op, answer.status) {
            (Op::Get, 200) | (Op::Put, 200 | 201) | (Op::Delete, 204) => Outcome::Ok,
            (Op::Get | Op::Delete, 404) => Outcome::Miss,
            (_, s) => Outcome::Status(s),
        };
        (outcome, Some(answer))
    }

    async fn send(&mut self, req: &conn::Request) -> Result<Answer, Failure> {
        // A request that was never sent (the server had closed the idle
        // connection) goes once more on a fresh connection.
        for _ in 0..2 {
            if self.conn.as_ref().is_some_and(Conn::is_closed) {
                self.conn = None;
            }
            if self.conn.is_none() {
                let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::open(&self.target))
                    .await
                    .map_err(|_| {
                        Failure::Connect(format!(
                            "{}: no connection within {CONNECT_TIMEOUT:?}",
                            self.target.authority
                        ))
                    })??;
                self.conn = Some(conn);
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.send(&self.target, req).await {
                Ok(answer) => return Ok(answer),
                Err(None) => self.conn = None,
                Err(Some(f)) => return Err(f),
            }
        }
        Err(Failure::Closed(format!(
            "{} closed the connection before the request could be sent",
            self.target.authority
        )))
    }

    /// Waits before the next connect attempt (never past `end`).
    async fn back_off(&mut self, live: &Live, end: Option<Instant>) {
        let mut until = Instant::now() + self.backoff;
        if let Some(end) = end {
            until = until.min(end);
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = live.stop_notify.notified() => {}
        }
    }
}
