//! `ripple bench`: a load generator, in the manner of redis-benchmark and
//! etcd's benchmark tool. Documented in docs/BENCH.md.
//!
//! A run: check every node answers `/health` (learning its id), open
//! `--connections` keep-alive connections (connection i to node i mod N),
//! optionally `--preload` the key space through them, warm up, then count
//! every request for `--duration` or `--requests`, closed loop or at a
//! steady `--rate`. With several nodes, a sample of the writes is followed
//! until every other node serves it (replication lag, `lag`). Progress goes
//! to stderr, the report to stdout.
//!
//! - `worker`: one connection's task, its counters, the key and op choice.
//! - `conn`: the connection itself, on hyper's low-level HTTP/1.1 client.
//! - `hist`: the latency histogram and percentile math.
//! - `lag`: the replication lag sampler and its probes.
//! - `report`: the table and the JSON object.

mod conn;
mod hist;
mod lag;
mod report;
mod worker;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::rng::Rng;
use crate::client::{self, Endpoint};
use crate::http::keypath;
use conn::Target;
use report::{PreloadReport, Report};
use worker::{Live, Shared, Stats, Timeline, Worker};

/// What the connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// GET random keys (run `--preload` first so they hit).
    Get,
    /// PUT random keys.
    Put,
    /// GET or PUT random keys, GET with probability `--read-ratio`.
    Mixed,
    /// DELETE keys in order through the key space (`--preload` first).
    Delete,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Put => "put",
            Workload::Mixed => "mixed",
            Workload::Delete => "delete",
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Node URL, or several separated by commas: connection i goes to node
    /// i mod N, for reads and writes alike.
    #[arg(long, env = "RIPPLE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Bearer token, for nodes with auth on.
    #[arg(long, env = "RIPPLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// With `--workload mixed`: the share of GETs, from 0 to 1.
    #[arg(long, default_value = "0.9", value_parser = parse_ratio, allow_negative_numbers = true)]
    pub read_ratio: f64,
    /// Concurrent keep-alive connections, each sending one request at a time.
    #[arg(long, short = 'c', default_value = "64", value_parser = parse_connections)]
    pub connections: usize,
    /// Size of the key space: keys PREFIX00000000 to PREFIX{keys-1}.
    #[arg(long, default_value = "100000", value_parser = parse_positive)]
    pub keys: u64,
    /// The prefix of every key.
    #[arg(long, default_value = "bench:")]
    pub key_prefix: String,
    /// Bytes in each value written.
    #[arg(long, default_value = "100", value_parser = parse_value_size)]
    pub value_size: usize,
    /// How long to count requests, e.g. 500ms, 10s, 2m [default: 10s].
    #[arg(long, short = 'd', value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Count this many requests instead of running for a duration.
    #[arg(long, short = 'n', value_parser = parse_positive)]
    pub requests: Option<u64>,
    /// Run this long first without counting.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Before the run, PUT every key of the key space once (so GETs hit).
    #[arg(long)]
    pub preload: bool,
    /// A steady total of requests per second, spread over the connections,
    /// instead of as fast as the nodes answer. Latency then counts from
    /// when each request was due, so queueing in the client is included.
    #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// A request without an answer after this long counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the key and value choices [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Client threads. One (as redis-benchmark's default) is the cheapest
    /// client when it shares the machine with the nodes it measures; give
    /// more when it has cores of its own and one thread cannot keep up.
    #[arg(long, default_value = "1", value_parser = parse_threads)]
    pub threads: usize,
}

/// Largest value a run may write.
const MAX_VALUE_SIZE: usize = 1 << 30;
const MAX_CONNECTIONS: usize = 10_000;
const MAX_THREADS: usize = 256;
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// A spare tail on the value buffer, so values start at random offsets.
const VALUE_SPREAD: usize = 4096;

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" if !number.is_empty() => {
            return Err(format!(
                "{text:?} has no unit: write e.g. 500ms, 10s, 2m or 1h"
            ))
        }
        _ => {
            return Err(format!(
                "{text:?} is not a duration: write a number and a unit (ms, s, m or h), e.g. 500ms, 10s, 2m"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 10s, 2m"))?;
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|d| *d <= Duration::from_secs(365 * 24 * 3600))
        .ok_or_else(|| format!("{text:?} is not a duration of at most a year"))
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{text:?} is not a ratio from 0 to 1 (e.g. 0.9)"))
}

fn parse_positive(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a whole number of at least 1"))
}

fn parse_connections(text: &str) -> Result<usize, String> {
    parse_count(text, MAX_CONNECTIONS, "connections")
}

fn parse_threads(text: &str) -> Result<usize, String> {
    parse_count(text, MAX_THREADS, "threads")
}

/// A whole number of `what` from 1 to `max`.
fn parse_count(text: &str, max: usize, what: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{text:?} is not a number of {what} from 1 to {max}"))
}

/// The runtime a run uses: one thread runs every connection on the calling
/// thread (no hand-offs between threads, no wake-ups of idle ones), more
/// spread them over a pool.
pub fn runtime(args: &BenchArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    builder.enable_all().build()
}

fn parse_value_size(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_VALUE_SIZE)
        .ok_or_else(|| format!("{text:?} is not a size in bytes from 0 to {MAX_VALUE_SIZE}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("{text:?} is not a rate in requests per second above 0"))
}

/// A node as given on the command line.
struct NodeTarget {
    url: String,
    endpoint: Arc<Endpoint>,
    target: Target,
}

fn parse_urls(urls: &str, token: Option<&str>) -> anyhow::Result<Vec<NodeTarget>> {
    let auth = token
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .transpose()
        .map_err(|_| anyhow!("bad --token: it must be printable ASCII"))?;
    let mut nodes = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if url.starts_with("https:") {
            bail!("bad --url {url:?}: ripple bench speaks plain http:// only (it measures the node, not TLS)");
        }
        let mut endpoint = Endpoint::from_url(url).context("bad --url")?;
        if let Some(a) = &auth {
            endpoint = endpoint.with_header(hyper::header::AUTHORIZATION, a.clone());
        }
        let host = HeaderValue::from_str(endpoint.authority())
            .map_err(|_| anyhow!("bad --url: bad host in {url:?}"))?;
        nodes.push(NodeTarget {
            url: url.trim_end_matches('/').to_owned(),
            target: Target {
                authority: endpoint.authority().to_owned(),
                host,
                auth: auth.clone(),
            },
            endpoint: Arc::new(endpoint),
        });
    }
    if nodes.is_empty() {
        bail!("bad --url: no URL given");
    }
    Ok(nodes)
}

/// Asks every node for `/health`; the node ids (None where unknown). Fails
/// when no node answers.
async fn preflight(nodes: &[NodeTarget]) -> anyhow::Result<Vec<Option<String>>> {
    let mut checks = Vec::new();
    for node in nodes {
        let endpoint = node.endpoint.clone();
        checks.push(tokio::spawn(async move {
            let req = client::request(Method::GET, "/health", &[], Bytes::new())?;
            Ok::<_, anyhow::Error>(endpoint.send(req, Duration::from_secs(5)).await?)
        }));
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for (node, check) in nodes.iter().zip(checks) {
        match check.await? {
            Ok(reply) if reply.status == StatusCode::OK => ids.push(
                serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| v.get("node_id")?.as_str().map(str::to_owned)),
            ),
            Ok(reply) => {
                eprintln!(
                    "ripple bench: warning: {} answered /health with {}; is it a Ripple node?",
                    node.url, reply.status
                );
                ids.push(None);
            }
            Err(e) => {
                failures.push(format!("{e:#}"));
                ids.push(None);
            }
        }
    }
    if failures.len() == nodes.len() {
        bail!("no node could be reached: {}", failures.join("; "));
    }
    for f in failures {
        eprintln!("ripple bench: warning: {f}; its connections will count errors");
    }
    Ok(ids)
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    /// One line rewritten 4 times a second.
    Terminal,
    /// A line a second (stderr is a file or a pipe, without --json).
    Lines,
    Off,
}

/// A task printing a progress line until stopped.
struct Ticker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Ticker {
    fn start(
        mode: ProgressMode,
        mut line: impl FnMut() -> String + Send + 'static,
    ) -> Option<Ticker> {
        let every = match mode {
            ProgressMode::Terminal => Duration::from_millis(250),
            ProgressMode::Lines => Duration::from_secs(1),
            ProgressMode::Off => return None,
        };
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let text = line();
                if mode == ProgressMode::Terminal {
                    eprint!("\r\x1b[2K{text}");
                } else {
                    eprintln!("{text}");
                }
            }
            if mode == ProgressMode::Terminal {
                eprint!("\r\x1b[2K");
            }
        });
        Some(Ticker { stop, task })
    }

    async fn stop(ticker: Option<Ticker>) {
        if let Some(t) = ticker {
            let _ = t.stop.send(());
            let _ = t.task.await;
        }
    }
}

/// Ops per second between two calls.
struct RateMeter {
    last: Instant,
    count: u64,
}

impl RateMeter {
    fn new() -> RateMeter {
        RateMeter {
            last: Instant::now(),
            count: 0,
        }
    }

    fn rate(&mut self, count: u64) -> f64 {
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        let r = if secs > 0.0 {
            count.saturating_sub(self.count) as f64 / secs
        } else {
            0.0
        };
        self.last = now;
        self.count = count;
        r
    }
}

async fn join_workers(handles: Vec<JoinHandle<Worker>>) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(handles.len());
    for h in handles {
        workers.push(h.await.context("a benchmark connection failed")?);
    }
    Ok(workers)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let nodes = parse_urls(&args.url, args.token.as_deref())?;
    if args.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be more than 0");
    }
    if args.timeout.is_zero() {
        bail!("--timeout must be more than 0");
    }
    let path_prefix = keypath::encode_path(&args.key_prefix);
    format!("/v1/kv/{path_prefix}0")
        .parse::<hyper::Uri>()
        .map_err(|e| anyhow!("bad --key-prefix {:?}: {e}", args.key_prefix))?;
    let duration = match args.requests {
        Some(_) => None,
        None => Some(args.duration.unwrap_or(DEFAULT_DURATION)),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32
    });
    let mode = if std::io::stderr().is_terminal() {
        ProgressMode::Terminal
    } else if args.json {
        ProgressMode::Off
    } else {
        ProgressMode::Lines
    };

    let node_ids = preflight(&nodes).await?;

    let mut rng = Rng::new(seed ^ 0x5EED);
    let values: Vec<u8> = (0..args.value_size + VALUE_SPREAD)
        .map(|_| {
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                [rng.below(62) as usize]
        })
        .collect();
    let live = Arc::new(Live::default());
    let shared = Arc::new(Shared {
        workload: args.workload,
        read_ratio: args.read_ratio,
        keys: args.keys,
        path_prefix,
        key_prefix: args.key_prefix.clone(),
        value_size: args.value_size,
        connections: args.connections,
        next_delete: AtomicU64::new(0),
        values: Bytes::from(values),
        timeout: args.timeout,
        live: live.clone(),
    });
    let interrupt = {
        let live = live.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                live.stop.store(true, Ordering::Relaxed);
                live.stop_notify.notify_waiters();
            }
        })
    };

    let mut handles = Vec::new();
    for i in 0..args.connections {
        let node = i % nodes.len();
        let w = Worker::new(i, nodes[node].target.clone(), seed);
        handles.push(tokio::spawn(w.connect(args.timeout)));
    }
    let mut workers = join_workers(handles).await?;

    let preload = if args.preload {
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let ticker = {
            let (live, keys) = (live.clone(), args.keys);
            let mut meter = RateMeter::new();
            Ticker::start(mode, move || {
                let done = live.preloaded.load(Ordering::Relaxed).min(keys);
                format!(
                    "preload  {:>6.1}s  {done}/{keys} keys  {:.0} keys/s  {} errors",
                    started.elapsed().as_secs_f64(),
                    meter.rate(done),
                    live.preload_errors.load(Ordering::Relaxed)
                )
            })
        };
        let handles = workers
            .into_iter()
            .map(|w| tokio::spawn(w.preload(shared.clone(), next.clone())))
            .collect();
        workers = join_workers(handles).await?;
        Ticker::stop(ticker).await;
        let mut stats = Stats::default();
        for w in &workers {
            stats.merge(&w.preload_stats);
        }
        let report = PreloadReport {
            keys: args.keys,
            elapsed: started.elapsed(),
            stats,
        };
        if report.stats.total().ok == 0 && !live.stopped() {
            let why = report
                .stats
                .examples
                .values()
                .next()
                .cloned()
                .unwrap_or_default();
            bail!("the preload wrote no key: {why}");
        }
        Some(report)
    } else {
        None
    };

    let writes = match args.workload {
        Workload::Put => true,
        Workload::Mixed => args.read_ratio < 1.0,
        Workload::Get | Workload::Delete => false,
    };
    let lag = (nodes.len() > 1 && writes).then(|| {
        lag::start(
            nodes
                .iter()
                .zip(&node_ids)
                .map(|(n, id)| lag::ProbeNode {
                    endpoint: n.endpoint.clone(),
                    node_id: id.clone(),
                })
                .collect(),
        )
    });

    let start = Instant::now();
    let measure = start + args.warmup;
    let timeline = Timeline {
        start,
        measure,
        end: duration.map(|d| measure + d),
        tickets: args.requests.map(|n| (Arc::new(AtomicU64::new(0)), n)),
        pace: args
            .rate
            .map(|r| Duration::from_secs_f64(args.connections as f64 / r)),
        sampler: lag.as_ref().map(|(s, _)| s.clone()),
    };
    let ticker = {
        let live = live.clone();
        let mut meter = RateMeter::new();
        let (warmup, duration, requests) = (args.warmup, duration, args.requests);
        Ticker::start(mode, move || {
            let now = Instant::now();
            let warm = live.warmup_ops.load(Ordering::Relaxed);
            let ops = live.ops.load(Ordering::Relaxed);
            let rate = meter.rate(warm + ops);
            if now < measure {
                format!(
                    "warmup  {:.1}/{:.1}s  {warm} ops  {rate:.0} ops/s",
                    (now - start).as_secs_f64(),
                    warmup.as_secs_f64()
                )
            } else {
                let of = match (duration, requests) {
                    (Some(d), _) => format!("/{:.1}s", d.as_secs_f64()),
                    _ => String::new(),
                };
                let of_ops = requests.map(|n| format!("/{n}")).unwrap_or_default();
                format!(
                    "run  {:.1}s{of}  {ops}{of_ops} ops  {rate:.0} ops/s  {} errors",
                    (now - measure).as_secs_f64(),
                    live.errors.load(Ordering::Relaxed)
                )
            }
        })
    };
    let handles = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(shared.clone(), timeline.clone())))
        .collect();
    let workers = join_workers(handles).await?;
    let finished = Instant::now();
    Ticker::stop(ticker).await;
    let interrupted = live.stopped();

    let last = workers.iter().filter_map(|w| w.last_done).max();
    let until = match timeline.end {
        Some(end) if !interrupted => last.map_or(end, |l| l.max(end)),
        _ => last.unwrap_or(finished),
    };
    let elapsed = until.saturating_duration_since(measure);
    drop(timeline);

    let lag = match lag {
        Some((sampler, probes)) => {
            drop(sampler);
            let ticker = Ticker::start(mode, || {
                "waiting for the last replication lag probes".into()
            });
            let report = probes.await.context("the replication lag probes failed")?;
            Ticker::stop(ticker).await;
            Some(report)
        }
        None => None,
    };
    interrupt.abort();

    let mut stats = Stats::default();
    for w in &workers {
        stats.merge(&w.stats);
    }
    let report = Report {
        workload: args.workload,
        read_ratio: args.read_ratio,
        urls: nodes.iter().map(|n| n.url.clone()).collect(),
        connections: args.connections,
        threads: args.threads,
        keys: args.keys,
        key_prefix: args.key_prefix,
        value_size: args.value_size,
        rate: args.rate,
        seed,
        warmup: args.warmup,
        duration,
        requests_target: args.requests,
        timeout: args.timeout,
        interrupted,
        elapsed,
        stats,
        preload,
        lag,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    if interrupted {
        bail!("interrupted");
    }
    if report.succeeded() == 0 {
        let why = report
            .stats
            .examples
            .values()
            .next()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        bail!("no request succeeded{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["10x", "10", "", "s", "-1s", "1.2.3s", "ms10", "99999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn numbers_are_checked() {
        assert!(parse_ratio("0.9").is_ok());
        assert!(parse_ratio("1").is_ok());
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
        assert!(parse_connections("0").is_err());
        assert!(parse_connections("64").is_ok());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_positive("0").is_err());
        assert!(parse_urls("http://127.0.0.1:1,,http://[::1]:2", None).is_ok());
        assert!(parse_urls("localhost", None).is_err());
        assert!(parse_urls("https://a:1", None).is_err());
        assert!(parse_urls(",", None).is_err());
    }
}
