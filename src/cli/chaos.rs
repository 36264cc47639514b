//! `ripple chaos`: a chaos checker. Starts a cluster of this binary's nodes
//! on loopback, every link through a fault-injecting proxy, runs clients
//! against random nodes while a seeded injector kills, stops, partitions,
//! slows, degrades and wipes, then restores everything, waits for the nodes
//! to converge and checks the recorded history against the final state.
//! Documented in docs/CHAOS.md.
//!
//! - `rng`: the seeded PRNG every choice comes from.
//! - `proxy`: one link's TCP proxy: cut, slow, lossy.
//! - `nodes`: the child processes, their configs, data and logs.
//! - `clients`: the client tasks and the requests they record.
//! - `faults`: the fault injector and the wipe bookkeeping.
//! - `history`: what a request and its outcome are.
//! - `check`: the checks, as pure functions over history and final state.

mod check;
mod clients;
mod faults;
mod history;
mod nodes;
mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::rng::Rng;
use crate::client::{self, Endpoint};
use check::{Check, Final, Input};
use faults::{FaultKind, Injector};
use history::{now_us, parse_etag, Op, Outcome};
use nodes::Nodes;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How many nodes, 3 to 9; at most (N-1)/2 are down or stopped at once.
    #[arg(long, default_value = "3", value_parser = parse_nodes)]
    pub nodes: usize,
    /// How long to inject faults, e.g. 20s, 3m.
    #[arg(long, default_value = "60s", value_parser = parse_span)]
    pub duration: Duration,
    /// Seed of every random choice [default: from the clock; always printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Concurrent clients, 1 to 64.
    #[arg(long, default_value = "4", value_parser = parse_clients)]
    pub clients: usize,
    /// Keys in the key space, 1 to 1000 (few keys: many conflicts).
    #[arg(long, default_value = "20", value_parser = parse_keys)]
    pub keys: usize,
    /// Work folder for the nodes' configs, data and logs; it must be new or
    /// empty [default: a new folder under the system temp dir]. Deleted at
    /// the end unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the work folder (node logs, history, faults) at the end.
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for the nodes to converge once faults stop.
    #[arg(long, default_value = "30s", value_parser = parse_span)]
    pub converge_timeout: Duration,
}

fn parse_span(text: &str) -> Result<Duration, String> {
    let d = super::bench::parse_duration(text)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short: give at least 1s"));
    }
    Ok(d)
}

fn parse_count(text: &str, lo: usize, hi: usize) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| format!("{text:?} is not a whole number from {lo} to {hi}"))
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    parse_count(text, 3, 9)
}

fn parse_clients(text: &str) -> Result<usize, String> {
    parse_count(text, 1, 64)
}

fn parse_keys(text: &str) -> Result<usize, String> {
    parse_count(text, 1, 1000)
}

/// `60s`, `1.500s`, `3m`.
fn show_span(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms >= 120_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// The work folder; removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn create(dir: Option<&Path>, seed: u64) -> anyhow::Result<WorkDir> {
        let path = match dir {
            Some(d) => {
                let d =
                    std::path::absolute(d).with_context(|| format!("bad --dir {}", d.display()))?;
                if d.exists() {
                    let mut entries = std::fs::read_dir(&d).with_context(|| {
                        format!("--dir {} is not a readable folder", d.display())
                    })?;
                    if entries.next().is_some() {
                        bail!(
                            "--dir {} is not empty: give a new or empty folder (it is deleted at the end unless --keep)",
                            d.display()
                        );
                    }
                } else {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("cannot create {}", d.display()))?;
                }
                d
            }
            None => {
                let d = std::env::temp_dir()
                    .join(format!("ripple-chaos-{seed}-{}", std::process::id()));
                std::fs::create_dir(&d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                d
            }
        };
        Ok(WorkDir { path, remove: true })
    }

    /// Removes the folder unless `keep`.
    fn finish(mut self, keep: bool) {
        if keep {
            self.remove = false;
            eprintln!("chaos: work dir kept: {}", self.path.display());
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Client tasks, aborted if the run ends early.
struct ClientTasks(Vec<JoinHandle<Vec<Op>>>);

impl Drop for ClientTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What a run found.
struct Report {
    lines: Vec<String>,
    summary: String,
    failed: Option<String>,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let work = WorkDir::create(args.dir.as_deref(), seed)?;
    eprintln!(
        "chaos: seed={seed} nodes={} duration={} clients={} keys={} dir={}",
        args.nodes,
        show_span(args.duration),
        args.clients,
        args.keys,
        work.path.display()
    );
    eprintln!(
        "chaos: reproduce with: ripple chaos --nodes {} --duration {} --clients {} --keys {} --seed {seed} --keep",
        args.nodes,
        show_span(args.duration),
        args.clients,
        args.keys
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut nodes: Option<Nodes> = None;
    let result = tokio::select! {
        r = phases(&args, seed, &work.path, &mut nodes) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
        _ = hangup.recv() => Err(anyhow!("hung up (SIGHUP)")),
    };
    if let Some(mut n) = nodes.take() {
        n.shutdown().await;
    }
    work.finish(args.keep);
    let report = result.map_err(|e| e.context(format!("chaos run with seed {seed} failed")))?;
    for line in &report.lines {
        println!("{line}");
    }
    println!("{}", report.summary);
    match report.failed {
        Some(why) => {
            bail!("{why}; reproduce with --seed {seed} (and --keep to keep the node logs)")
        }
        None => Ok(()),
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ ((std::process::id() as u64) << 20)) % 1_000_000_000
}

async fn phases(
    args: &ChaosArgs,
    seed: u64,
    dir: &Path,
    slot: &mut Option<Nodes>,
) -> anyhow::Result<Report> {
    let t0 = now_us();
    let mut rng = Rng::new(seed);
    let mut proxy_rng = rng.fork();
    let injector_rng = rng.fork();
    let client_rngs: Vec<Rng> = (0..args.clients).map(|_| rng.fork()).collect();
    let width = (args.keys - 1).to_string().len();
    let keys: Vec<String> = (0..args.keys).map(|i| format!("k{i:0width$}")).collect();

    let nodes = slot.insert(Nodes::new(dir, args.nodes, &mut proxy_rng, t0).await?);
    nodes.start_all().await?;
    eprintln!(
        "chaos: {} nodes up; {} clients and faults for {}",
        nodes.len(),
        args.clients,
        show_span(args.duration)
    );

    let shared = Arc::new(clients::Shared {
        endpoints: nodes.endpoints.clone(),
        keys: keys.clone(),
        stop: AtomicBool::new(false),
    });
    let mut tasks = ClientTasks(
        client_rngs
            .into_iter()
            .enumerate()
            .map(|(id, r)| tokio::spawn(clients::run(id, r, shared.clone())))
            .collect(),
    );

    let mut injector = Injector::new(nodes, injector_rng, t0);
    injector.run(args.duration).await?;
    injector.restore_all().await?;
    // Convergence is timed from here: every fault undone.
    let restored = Instant::now();
    let counts = injector.counts.clone();
    let wipes = std::mem::take(&mut injector.wipes);
    let events = std::mem::take(&mut injector.events);
    drop(injector);

    shared.stop.store(true, Ordering::SeqCst);
    let mut ops: Vec<Op> = Vec::new();
    for task in std::mem::take(&mut tasks.0) {
        ops.extend(task.await.context("a client task failed")?);
    }
    ops.sort_by_key(|op| (op.start, op.client));
    eprintln!(
        "chaos: clients stopped after {} requests; waiting for convergence",
        ops.len()
    );

    let endpoints: Vec<Arc<Endpoint>> = (0..nodes.len()).map(|i| nodes.endpoint(i)).collect();
    let converged = converge(&endpoints, args.converge_timeout).await;
    let converged_in = converged.ok.then(|| restored.elapsed());

    let mut lines = Vec::new();
    let mut violations: Vec<check::Violation> = Vec::new();
    for (i, state) in converged.states.iter().enumerate() {
        lines.push(match state {
            Ok(s) => format!(
                "chaos: {} keys={} digest={:016x}",
                nodes.ids[i],
                s.len(),
                digest(s)
            ),
            Err(e) => format!("chaos: {} unreadable: {e:#}", nodes.ids[i]),
        });
    }
    if !converged.ok {
        violations.push(check::Violation {
            check: Check::Convergence,
            text: format!(
                "the nodes did not converge within {}: {}",
                show_span(args.converge_timeout),
                differences(&converged.states, &nodes.ids)
            ),
        });
    }

    // The final state, from the converged nodes.
    let final_state: Option<BTreeMap<String, Final>> = match converged.states.first() {
        Some(Ok(state)) if converged.ok => Some(
            state
                .iter()
                .map(|(key, (etag, value))| {
                    let fin = Final::Present {
                        value: value.clone(),
                        version: parse_etag(etag),
                    };
                    (key.clone(), fin)
                })
                .collect(),
        ),
        _ => None,
    };
    let t_ops = now_us();
    let out = check::check(&Input {
        ops: &ops,
        nodes: &nodes.ids,
        wipes: &wipes,
        final_state: final_state.as_ref(),
        t0,
    });
    eprintln!(
        "chaos: checked {} requests in {:.1}s",
        ops.len(),
        (now_us() - t_ops) as f64 / 1e6
    );
    violations.extend(out.violations);

    // What a kept work dir holds for a post-mortem.
    let history: Vec<String> = ops.iter().map(|op| op.describe(&nodes.ids, t0)).collect();
    let _ = std::fs::write(dir.join("history.txt"), history.join("\n") + "\n");
    let _ = std::fs::write(dir.join("faults.txt"), events.join("\n") + "\n");
    let mut forgiven: Vec<String> = Vec::new();
    for (key, writes) in &out.forgiven {
        forgiven.push(format!("key {key}:"));
        for &(i, w) in writes {
            forgiven.push(format!(
                "  exposed by the wipe of {} (killed at {}): {}",
                nodes.ids[wipes[w].node],
                history::rel(wipes[w].kill, t0),
                ops[i].describe(&nodes.ids, t0)
            ));
        }
    }
    let _ = std::fs::write(dir.join("forgiven.txt"), forgiven.join("\n") + "\n");
    let _ = std::fs::write(
        dir.join("violations.txt"),
        violations
            .iter()
            .map(|v| format!("{}: {}", v.check.label(), v.text))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    );

    let ok = ops.iter().filter(|op| op.outcome.is_ok()).count();
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|op| f(op)).count();
    lines.push(format!(
        "chaos: answers: written={} read={} not_found={} precondition_failed={} refused={} unknown={} unexpected={}",
        count(&|op| matches!(op.outcome, Outcome::Written { .. })),
        count(&|op| matches!(op.outcome, Outcome::Read { .. })),
        count(&|op| matches!(op.outcome, Outcome::NotFound)),
        count(&|op| matches!(op.outcome, Outcome::Refused { status: 412, .. })),
        count(&|op| matches!(op.outcome, Outcome::Refused { status, .. } if status != 412)),
        count(&|op| matches!(op.outcome, Outcome::Unknown { .. })),
        count(&|op| matches!(op.outcome, Outcome::Unexpected { .. })),
    ));
    lines.push(format!(
        "chaos: writes with a lost answer: {} (+{} timed out); keys only a wipe explains: {}; reads checked: {}",
        out.unknown_bounded,
        out.unknown_unbounded,
        out.forgiven.len(),
        out.reads_checked
    ));
    let by_check: Vec<String> = Check::ALL
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                &c.label()[1..2],
                violations.iter().filter(|v| v.check == *c).count()
            )
        })
        .collect();
    lines.push(format!(
        "chaos: violations by check: {}",
        by_check.join(" ")
    ));
    for v in violations.iter().take(20) {
        lines.push(format!("chaos: VIOLATION {}: {}", v.check.label(), v.text));
    }
    if violations.len() > 20 {
        lines.push(format!(
            "chaos: ... and {} more violations",
            violations.len() - 20
        ));
    }
    let faults: Vec<String> = FaultKind::ALL
        .iter()
        .map(|k| format!("{}={}", k.name(), counts.get(*k)))
        .collect();
    let summary = format!(
        "chaos: seed={seed} nodes={} duration={} ops={} (ok={ok} failed={}) faults={} ({}) converged_in={} violations={}",
        nodes.len(),
        show_span(args.duration),
        ops.len(),
        ops.len() - ok,
        counts.total(),
        faults.join(" "),
        converged_in.map_or("timeout".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        violations.len()
    );
    let failed = if !violations.is_empty() {
        Some(format!("chaos found {} violation(s)", violations.len()))
    } else {
        None
    };
    Ok(Report {
        lines,
        summary,
        failed,
    })
}

/// A node's content: key -> (raw ETag, value).
type Content = BTreeMap<String, (String, String)>;

struct Converged {
    ok: bool,
    states: Vec<anyhow::Result<Content>>,
}

/// Polls every node's content until all are identical, or `limit`.
async fn converge(endpoints: &[Arc<Endpoint>], limit: Duration) -> Converged {
    let start = Instant::now();
    loop {
        let mut polls = tokio::task::JoinSet::new();
        for (i, e) in endpoints.iter().enumerate() {
            let e = e.clone();
            polls.spawn(async move { (i, content(e).await) });
        }
        let mut states: Vec<anyhow::Result<Content>> =
            endpoints.iter().map(|_| Err(anyhow!("not read"))).collect();
        while let Some(done) = polls.join_next().await {
            if let Ok((i, state)) = done {
                states[i] = state;
            }
        }
        let same = match states.first() {
            Some(Ok(first)) => states.iter().all(|s| s.as_ref().is_ok_and(|s| s == first)),
            _ => false,
        };
        if same || start.elapsed() >= limit {
            return Converged { ok: same, states };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every live key of one node, with its ETag and value: its listing, then
/// a GET of each key (16 at a time).
async fn content(endpoint: Arc<Endpoint>) -> anyhow::Result<Content> {
    async fn send(endpoint: &Endpoint, path: String) -> anyhow::Result<client::Reply> {
        let req = client::request(Method::GET, &path, &[], Bytes::new())?;
        Ok(endpoint.send(req, Duration::from_secs(5)).await?)
    }
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = client::list_path("", cursor.as_deref(), Some(1000));
        let (page, next) = client::parse_list_page(&send(&endpoint, path).await?)?;
        keys.extend(page);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let mut out = Content::new();
    let mut gets = tokio::task::JoinSet::new();
    let mut keys = keys.into_iter();
    loop {
        while gets.len() < 16 {
            let Some(key) = keys.next() else { break };
            let e = endpoint.clone();
            gets.spawn(async move {
                let reply = send(&e, client::kv_path(&key)).await;
                (key, reply)
            });
        }
        let Some(done) = gets.join_next().await else {
            return Ok(out);
        };
        let (key, reply) = done?;
        let r = reply?;
        match r.status {
            StatusCode::OK => {
                let etag = r.header("etag").unwrap_or_default().to_owned();
                let value = String::from_utf8_lossy(&r.body).into_owned();
                out.insert(key, (etag, value));
            }
            StatusCode::NOT_FOUND => {}
            s => bail!("GET {key} answered {s}"),
        }
    }
}

/// FNV-1a over the sorted keys, values and ETags.
fn digest(content: &Content) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (key, (etag, value)) in content {
        eat(key.as_bytes());
        eat(&[0]);
        eat(value.as_bytes());
        eat(&[0]);
        eat(etag.as_bytes());
        eat(&[0xff]);
    }
    h
}

/// The keys on which the nodes differ, with each node's view (a few).
fn differences(states: &[anyhow::Result<Content>], ids: &[String]) -> String {
    let mut keys: Vec<&String> = states
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .flat_map(|s| s.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for (i, s) in states.iter().enumerate() {
        if let Err(e) = s {
            out.push(format!("{} unreadable ({e:#})", ids[i]));
        }
    }
    let mut shown = 0;
    for key in keys {
        let views: Vec<Option<&(String, String)>> = states
            .iter()
            .map(|s| s.as_ref().ok().and_then(|s| s.get(key)))
            .collect();
        if views.iter().all(|v| *v == views[0]) {
            continue;
        }
        shown += 1;
        if shown > 5 {
            out.push("...".to_owned());
            break;
        }
        let each: Vec<String> = views
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some((etag, value)) => format!("{}={value}@{etag}", ids[i]),
                None => format!("{}=absent", ids[i]),
            })
            .collect();
        out.push(format!("{key}: {}", each.join(" ")));
    }
    out.join("; ")
}
