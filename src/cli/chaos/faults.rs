//! The fault injector of a chaos run. Every 1-3 s (drawn from the seeded
//! PRNG) it picks one fault and schedules its undoing:
//!
//! - `kill`: `kill -9` a node, restart it on its data 1-4 s later;
//! - `stop`: SIGSTOP a node, SIGCONT it 0.5-3 s later (`MAX_PAUSE`);
//! - `partition`: cut every link between a random group (at most half the
//!   nodes) and the rest, both ways, heal 1-5 s later;
//! - `slow`: delay every chunk on one link by 10-200 ms, for 1-5 s;
//! - `lossy`: drop connections on one link with 2-20 % per chunk, 1-5 s;
//! - `wipe`: `kill -9` a node, note what the other nodes hold (their whole
//!   feeds: every value and tombstone), delete its data and restart it
//!   empty.
//!
//! At most (N-1)/2 nodes are down or stopped at once (one of 3, two of 5);
//! a wipe waits until every other node is up, so that what they hold can be
//! read. When a drawn fault is not possible now, another kind is tried.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::check::Wipe;
use super::history::{now_us, rel, Micros};
use super::nodes::{NodeState, Nodes};
use crate::cli::rng::Rng;
use crate::client::{self, Endpoint};
use crate::node::version::Version;
use crate::replication::{codec, feed};

/// The longest a node stays stopped.
pub const MAX_PAUSE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Stop,
    Partition,
    Slow,
    Lossy,
    Wipe,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Partition,
        FaultKind::Slow,
        FaultKind::Lossy,
        FaultKind::Wipe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Partition => "partition",
            FaultKind::Slow => "slow",
            FaultKind::Lossy => "lossy",
            FaultKind::Wipe => "wipe",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Counts(pub [u64; 6]);

impl Counts {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn get(&self, kind: FaultKind) -> u64 {
        self.0[kind as usize]
    }
}

#[derive(Debug)]
enum Undo {
    Restart(usize),
    Resume(usize),
    Heal(Vec<(usize, usize)>),
    Unslow((usize, usize)),
    Unlossy((usize, usize)),
}

pub struct Injector<'a> {
    nodes: &'a mut Nodes,
    rng: Rng,
    t0: Micros,
    pending: Vec<(Instant, Undo)>,
    partitioned: bool,
    degraded: HashSet<(usize, usize)>,
    pub counts: Counts,
    pub wipes: Vec<Wipe>,
    /// Every fault and undo, as printed.
    pub events: Vec<String>,
}

impl<'a> Injector<'a> {
    pub fn new(nodes: &'a mut Nodes, rng: Rng, t0: Micros) -> Injector<'a> {
        Injector {
            nodes,
            rng,
            t0,
            pending: Vec::new(),
            partitioned: false,
            degraded: HashSet::new(),
            counts: Counts::default(),
            wipes: Vec::new(),
            events: Vec::new(),
        }
    }

    fn say(&mut self, what: &str) {
        let line = format!("{} {what}", rel(now_us(), self.t0));
        eprintln!("chaos: {line}");
        self.events.push(line);
    }

    fn max_down(&self) -> usize {
        (self.nodes.len() - 1) / 2
    }

    fn down(&self) -> usize {
        self.nodes
            .state
            .iter()
            .filter(|s| **s != NodeState::Up)
            .count()
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes.state[i] == NodeState::Up)
            .collect()
    }

    fn secs(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.range(lo_ms, hi_ms + 1))
    }

    /// Injects faults until `duration` has passed, undoing each in turn.
    pub async fn run(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        let mut next_fault = Instant::now() + self.secs(1000, 3000);
        loop {
            let next_undo = self.pending.iter().map(|p| p.0).min();
            let wake = next_undo.map_or(next_fault, |u| u.min(next_fault)).min(end);
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            self.undo_due(now).await?;
            if now >= next_fault {
                self.inject().await?;
                next_fault = Instant::now() + self.secs(1000, 3000);
            }
        }
    }

    async fn undo_due(&mut self, now: Instant) -> anyhow::Result<()> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 <= now {
                due.push(self.pending.remove(i).1);
            } else {
                i += 1;
            }
        }
        // SIGCONT first: a restart takes a moment, and a pause must not
        // last longer than `MAX_PAUSE` because of it.
        due.sort_by_key(|u| !matches!(u, Undo::Resume(_)));
        for undo in due {
            self.undo(undo).await?;
        }
        Ok(())
    }

    async fn undo(&mut self, undo: Undo) -> anyhow::Result<()> {
        match undo {
            Undo::Restart(i) => {
                self.nodes.start(i).await?;
                self.say(&format!("restarted {}", self.nodes.ids[i]));
            }
            Undo::Resume(i) => {
                self.nodes.resume(i);
                self.say(&format!("SIGCONT {}", self.nodes.ids[i]));
            }
            Undo::Heal(links) => {
                for (a, b) in links {
                    self.nodes.link(a, b).set_cut(false);
                }
                self.partitioned = false;
                self.say("healed the partition");
            }
            Undo::Unslow(link) => {
                self.nodes.link(link.0, link.1).set_delay(Duration::ZERO);
                self.degraded.remove(&link);
                self.say(&format!("{} restored", self.link_name(link)));
            }
            Undo::Unlossy(link) => {
                self.nodes.link(link.0, link.1).set_loss(0.0);
                self.degraded.remove(&link);
                self.say(&format!("{} restored", self.link_name(link)));
            }
        }
        Ok(())
    }

    /// Ends every fault now: SIGCONT, heal, restart the dead nodes.
    pub async fn restore_all(&mut self) -> anyhow::Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|(_, u)| !matches!(u, Undo::Resume(_)));
        for (_, undo) in pending {
            self.undo(undo).await?;
        }
        for i in 0..self.nodes.len() {
            match self.nodes.state[i] {
                NodeState::Paused => self.nodes.resume(i),
                NodeState::Down => self.nodes.start(i).await?,
                NodeState::Up => {}
            }
            for j in 0..self.nodes.len() {
                self.nodes.link(i, j).heal();
            }
        }
        self.say("every fault undone");
        Ok(())
    }

    fn link_name(&self, (a, b): (usize, usize)) -> String {
        format!("link {}->{}", self.nodes.ids[a], self.nodes.ids[b])
    }

    fn schedule(&mut self, after: Duration, undo: Undo) {
        self.pending.push((Instant::now() + after, undo));
    }

    /// Draws a fault kind; tries the others when it is not possible now.
    async fn inject(&mut self) -> anyhow::Result<()> {
        let first = self.rng.index(FaultKind::ALL.len());
        for k in 0..FaultKind::ALL.len() {
            let kind = FaultKind::ALL[(first + k) % FaultKind::ALL.len()];
            if self.try_inject(kind).await? {
                self.counts.0[kind as usize] += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    async fn try_inject(&mut self, kind: FaultKind) -> anyhow::Result<bool> {
        let n = self.nodes.len();
        let node_budget = self.down() < self.max_down();
        match kind {
            FaultKind::Kill | FaultKind::Stop if node_budget => {
                let up = self.up_nodes();
                let i = up[self.rng.index(up.len())];
                if kind == FaultKind::Kill {
                    self.nodes.kill(i).await;
                    let after = self.secs(1000, 4000);
                    self.say(&format!(
                        "kill -9 {} (restart in {after:.1?})",
                        self.nodes.ids[i]
                    ));
                    self.schedule(after, Undo::Restart(i));
                } else {
                    self.nodes.pause(i);
                    let after = self.secs(500, MAX_PAUSE.as_millis() as u64);
                    self.say(&format!(
                        "SIGSTOP {} (SIGCONT in {after:.1?})",
                        self.nodes.ids[i]
                    ));
                    self.schedule(after, Undo::Resume(i));
                }
                Ok(true)
            }
            FaultKind::Partition if !self.partitioned => {
                let size = 1 + self.rng.index(n / 2);
                let mut group: Vec<usize> = (0..n).collect();
                for i in 0..size {
                    let j = i + self.rng.index(n - i);
                    group.swap(i, j);
                }
                group.truncate(size);
                group.sort_unstable();
                let mut links = Vec::new();
                for a in 0..n {
                    for b in 0..n {
                        if group.contains(&a) != group.contains(&b) {
                            self.nodes.link(a, b).set_cut(true);
                            links.push((a, b));
                        }
                    }
                }
                self.partitioned = true;
                let after = self.secs(1000, 5000);
                let names: Vec<&str> = group.iter().map(|&i| self.nodes.ids[i].as_str()).collect();
                self.say(&format!(
                    "partition {{{}}} from the rest (heal in {after:.1?})",
                    names.join(",")
                ));
                self.schedule(after, Undo::Heal(links));
                Ok(true)
            }
            FaultKind::Slow | FaultKind::Lossy => {
                let free: Vec<(usize, usize)> = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| a != b)
                    .filter(|l| !self.degraded.contains(l))
                    .collect();
                if free.is_empty() {
                    return Ok(false);
                }
                let link = free[self.rng.index(free.len())];
                self.degraded.insert(link);
                let after = self.secs(1000, 5000);
                if kind == FaultKind::Slow {
                    let delay = Duration::from_millis(self.rng.range(10, 201));
                    self.nodes.link(link.0, link.1).set_delay(delay);
                    self.say(&format!(
                        "{} slow, {delay:?} per chunk (for {after:.1?})",
                        self.link_name(link)
                    ));
                    self.schedule(after, Undo::Unslow(link));
                } else {
                    let loss = self.rng.range(2, 21) as f64 / 100.0;
                    self.nodes.link(link.0, link.1).set_loss(loss);
                    self.say(&format!(
                        "{} lossy, drops {:.0}% of chunks' connections (for {after:.1?})",
                        self.link_name(link),
                        loss * 100.0
                    ));
                    self.schedule(after, Undo::Unlossy(link));
                }
                Ok(true)
            }
            FaultKind::Wipe if self.down() == 0 && self.max_down() > 0 => {
                let i = self.rng.index(n);
                self.wipe(i).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Kills node i, records what the others hold, deletes its data and
    /// starts it empty.
    async fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes.kill(i).await;
        let kill = now_us();
        // Let feed answers already on their way from it land.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut held: HashMap<String, (Version, bool)> = HashMap::new();
        let mut unreadable = false;
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            match read_feed(&self.nodes.endpoint(j)).await {
                Ok(records) => {
                    for (key, (version, live)) in records {
                        match held.get(&key) {
                            Some((v, _)) if *v >= version => {}
                            _ => {
                                held.insert(key, (version, live));
                            }
                        }
                    }
                }
                Err(e) => {
                    unreadable = true;
                    self.say(&format!("cannot read {}'s feed: {e:#}", self.nodes.ids[j]));
                }
            }
        }
        self.nodes.delete_data(i)?;
        self.nodes.start(i).await?;
        self.say(&format!(
            "wiped {}: killed, data deleted, restarted empty",
            self.nodes.ids[i]
        ));
        self.wipes.push(Wipe {
            node: i,
            kill,
            held,
            unreadable,
        });
        Ok(())
    }
}

/// Every record a node holds, values and tombstones: key -> (version,
/// live), read from its whole change feed (without `from`, so the read
/// counts as no peer's acknowledgement).
async fn read_feed(endpoint: &Endpoint) -> anyhow::Result<HashMap<String, (Version, bool)>> {
    let timeout = Duration::from_secs(10);
    let fetch = |after: u64, feed: u64| async move {
        let path = format!("{}?after={after}&limit=1000&feed={feed}", feed::PATH);
        let req = client::request(Method::GET, &path, &[], Bytes::new())?;
        let reply = endpoint.send(req, timeout).await?;
        if reply.status != StatusCode::OK {
            bail!(
                "the feed answered {}: {}",
                reply.status,
                reply.error_message()
            );
        }
        let number = |name: &str| -> anyhow::Result<u64> {
            reply
                .header(name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("the feed's answer has no valid {name}"))
        };
        let (id, upto, last) = (
            number(feed::FEED_ID)?,
            number(feed::UPTO)?,
            number(feed::LAST_SEQ)?,
        );
        let entries = codec::decode(reply.body.clone())?;
        anyhow::Ok((id, upto, last, entries))
    };
    let (id, _, _, _) = fetch(0, 0).await?;
    let mut out: HashMap<String, (Version, bool)> = HashMap::new();
    let mut after = 0;
    for _ in 0..100_000 {
        let (same, upto, last, entries) = fetch(after, id).await?;
        if same != id {
            bail!("the node's feed changed while it was read");
        }
        for e in entries {
            let r = e.record;
            match out.get(&r.key) {
                Some((v, _)) if *v >= r.version => {}
                _ => {
                    out.insert(r.key, (r.version, !r.tombstone));
                }
            }
        }
        if upto >= last || upto <= after {
            return Ok(out);
        }
        after = upto;
    }
    bail!("the feed did not end")
}
