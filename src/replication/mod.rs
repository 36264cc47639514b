//! Replication: every node pulls every peer's change feed from its durable
//! cursor and applies what is newer (`puller`); serves its own feed to its
//! peers, long-polling when there is nothing new (`feed`), in binary frames
//! (`codec`); collects tombstones once every peer has them (`gc`); and
//! compares range digests with its peers to pull what the feeds missed
//! (`digest`, `repair`).
//!
//! The feed requests double as acknowledgements: a peer asks for changes
//! after the cursor it has durably stored, so the `after` of its latest
//! request says how far it has applied this node's feed. Writes with
//! `replicas=N` wait on those acknowledgements, and tombstone collection
//! waits for all of them.

pub mod codec;
pub mod digest;
pub mod feed;
pub mod gc;
pub mod puller;
pub mod repair;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::cluster::{Members, Peers};
use crate::config::ReplicationConfig;
use crate::node::Node;

/// How one node's pulling from one peer is going.
#[derive(Clone, Debug, Default)]
pub struct PullStatus {
    /// Whether the last feed request got an answer.
    pub reachable: bool,
    /// The feed id of the peer that `cursor` belongs to (0 before contact).
    pub feed_id: u64,
    /// The highest seq of the peer's feed applied here (durable).
    pub cursor: u64,
    /// The peer's highest seq, as of its last answer.
    pub peer_last_seq: u64,
    /// Since when this node has been behind the peer, if it is.
    pub behind_since: Option<Instant>,
    pub last_error: Option<String>,
    /// When the latest request whose answer is fully applied was sent: any
    /// answer the peer made before then has been applied here.
    pub applied_round: Option<Instant>,
    /// Answers with records applied since this node started.
    pub batches_applied: u64,
}

/// A write waiting for acknowledgements; see `Replication::awaiting_acks`.
pub struct AwaitingAcks<'a>(&'a AtomicUsize);

impl Drop for AwaitingAcks<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One puller's shared state.
pub struct Pull {
    pub status: watch::Sender<PullStatus>,
    /// Cuts a puller's back-off short (`sync`).
    pub wake: Notify,
}

/// The replication of one node.
pub struct Replication {
    pub node: Arc<Node>,
    pub members: Members,
    pub peers: Arc<Peers>,
    pub config: ReplicationConfig,
    /// Each peer's durable cursor on this node's feed.
    acks: watch::Sender<HashMap<String, u64>>,
    /// Writes between `awaiting_acks` and the end of their wait.
    awaiting_acks: AtomicUsize,
    pulls: HashMap<String, Arc<Pull>>,
    stop: watch::Sender<bool>,
}

/// A member's line in `/v1/status`.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub url: String,
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Whether this node's last request to it was answered (null for self).
    pub reachable: Option<bool>,
    /// The feed id of its that this node follows (hex), once known.
    pub feed_id: Option<String>,
    /// The highest seq of its feed applied here.
    pub cursor: Option<u64>,
    /// Its highest seq, as last seen.
    pub last_seq: Option<u64>,
    /// Changes of its feed not yet applied here (an upper bound).
    pub lag_changes: Option<u64>,
    /// How long this node has been behind it, in milliseconds (0 when not).
    pub lag_ms: Option<u64>,
    /// How far it has applied this node's feed, as its requests say.
    pub acked: Option<u64>,
    /// Answers of its feed with records applied here since this node
    /// started.
    pub batches_applied: Option<u64>,
    pub last_error: Option<String>,
}

/// What `sync` found for one peer.
#[derive(Debug, Serialize)]
pub struct SyncResult {
    pub id: String,
    pub reachable: bool,
    /// The peer's highest seq when the sync began.
    pub target: Option<u64>,
    /// This node's cursor on it when the sync ended.
    pub cursor: u64,
    pub caught_up: bool,
    pub error: Option<String>,
}

impl Replication {
    pub fn new(
        node: Arc<Node>,
        members: Members,
        peers: Arc<Peers>,
        config: ReplicationConfig,
    ) -> Arc<Self> {
        let pulls = members
            .peers()
            .map(|m| {
                (
                    m.id.clone(),
                    Arc::new(Pull {
                        status: watch::Sender::new(PullStatus::default()),
                        wake: Notify::new(),
                    }),
                )
            })
            .collect();
        Arc::new(Replication {
            node,
            members,
            peers,
            config,
            acks: watch::Sender::new(HashMap::new()),
            awaiting_acks: AtomicUsize::new(0),
            pulls,
            stop: watch::Sender::new(false),
        })
    }

    /// Starts a puller per peer and the tombstone collector.
    pub fn start(self: &Arc<Self>) {
        for peer in self.pulls.keys() {
            tokio::spawn(puller::run(self.clone(), peer.clone()));
        }
        tokio::spawn(gc::run(self.clone()));
        tokio::spawn(repair::run(self.clone()));
    }

    /// At start, before serving: when a reachable peer has applied more of
    /// this node's feed than the store holds (it was restored from a
    /// backup), starts a new feed so peers follow it from the beginning
    /// rather than skip the seqs it is about to take again. The feed answer
    /// checks the same on every request; this closes the window before the
    /// first one.
    pub async fn check_feed_not_behind(&self) -> Result<(), crate::storage::StorageError> {
        let last_seq = self.node.storage().last_seq().await?;
        let feed = format!("{:016x}", self.node.storage().feed_id().await?);
        let me = self.members.self_id().to_owned();
        let asks = self.members.peers().map(|m| {
            let peers = self.peers.clone();
            let id = m.id.clone();
            let me = me.clone();
            let feed = feed.clone();
            async move {
                let reply = peers
                    .send(
                        &id,
                        hyper::Method::GET,
                        "/v1/status",
                        &[],
                        bytes::Bytes::new(),
                        Duration::from_secs(2),
                    )
                    .await
                    .ok()?;
                let status: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
                // Only a cursor on this very feed counts: after a wipe, a
                // peer still shows its cursor on the old one.
                let entry = status["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == me.as_str())?
                    .clone();
                (entry["feed_id"] == feed.as_str()).then(|| entry["cursor"].as_u64())?
            }
        });
        let cursors: Vec<Option<u64>> = join_all(asks).await;
        if let Some(ahead) = cursors.into_iter().flatten().find(|c| *c > last_seq) {
            let id = self.node.storage().new_feed_id().await?;
            tracing::warn!(
                peer_cursor = ahead,
                last_seq,
                "a peer is ahead of this node's feed (restored from a backup?): started feed {id:016x}"
            );
        }
        Ok(())
    }

    /// Stops the pullers and the collector (in-flight applies finish).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once `stop` was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn pull(&self, peer: &str) -> Option<&Arc<Pull>> {
        self.pulls.get(peer)
    }

    /// Whether every puller has applied the answer to a request it sent
    /// after `t` (so no answer made before `t` is still on its way).
    pub fn rounds_done_since(&self, t: Instant) -> bool {
        self.pulls
            .values()
            .all(|p| p.status.borrow().applied_round.is_some_and(|r| r >= t))
    }

    /// Records that `peer` has durably applied this node's feed up to `seq`.
    pub fn record_ack(&self, peer: &str, seq: u64) {
        self.acks.send_if_modified(|acks| {
            let changed = acks.get(peer) != Some(&seq);
            acks.insert(peer.to_owned(), seq);
            changed
        });
    }

    /// Marks a write that will wait for acknowledgements, from before it
    /// is stored until the guard drops, so that the feed answer that
    /// carries it says so (`acks_awaited`). None when `wanted` is 0.
    pub fn awaiting_acks(&self, wanted: usize) -> Option<AwaitingAcks<'_>> {
        (wanted > 0).then(|| {
            self.awaiting_acks.fetch_add(1, Ordering::SeqCst);
            AwaitingAcks(&self.awaiting_acks)
        })
    }

    /// Whether a write waits for peers' acknowledgements.
    pub fn acks_awaited(&self) -> bool {
        self.awaiting_acks.load(Ordering::SeqCst) > 0
    }

    /// Each peer's acknowledged seq (peers never heard from are absent).
    pub fn acks(&self) -> HashMap<String, u64> {
        self.acks.borrow().clone()
    }

    /// Waits until `wanted` peers have applied this node's feed up to `seq`.
    /// `Ok(n)` once they have, `Err(n)` on timeout, with how many had.
    pub async fn wait_replicas(
        &self,
        seq: u64,
        wanted: usize,
        timeout: Duration,
    ) -> Result<usize, usize> {
        let count = |acks: &HashMap<String, u64>| acks.values().filter(|s| **s >= seq).count();
        let mut rx = self.acks.subscribe();
        let reached =
            match tokio::time::timeout(timeout, rx.wait_for(|acks| count(acks) >= wanted)).await {
                Ok(Ok(acks)) => Some(count(&acks)),
                _ => None,
            };
        match reached {
            Some(n) => Ok(n),
            None => Err(count(&self.acks.borrow())),
        }
    }

    /// Pulls from every peer now and waits until this node has applied
    /// each reachable peer's feed up to where it stood when the sync began.
    pub async fn sync(self: &Arc<Self>, timeout: Duration) -> Vec<SyncResult> {
        let syncs = self.members.peers().map(|m| {
            let this = self.clone();
            let id = m.id.clone();
            async move { this.sync_peer(&id, timeout).await }
        });
        join_all(syncs).await
    }

    async fn sync_peer(&self, id: &str, timeout: Duration) -> SyncResult {
        let pull = match self.pulls.get(id) {
            Some(p) => p.clone(),
            None => unreachable!("sync_peer is called for peers only"),
        };
        let deadline = Instant::now() + timeout;
        let target = feed::peer_last_seq(&self.peers, id, timeout).await;
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                return SyncResult {
                    id: id.to_owned(),
                    reachable: false,
                    target: None,
                    cursor: pull.status.borrow().cursor,
                    caught_up: false,
                    error: Some(e.to_string()),
                }
            }
        };
        pull.wake.notify_one();
        let mut rx = pull.status.subscribe();
        let left = deadline.saturating_duration_since(Instant::now());
        let caught_up = tokio::time::timeout(left, rx.wait_for(|s| s.cursor >= target))
            .await
            .is_ok();
        let status = pull.status.borrow().clone();
        SyncResult {
            id: id.to_owned(),
            reachable: true,
            target: Some(target),
            cursor: status.cursor,
            caught_up,
            error: if caught_up { None } else { status.last_error },
        }
    }

    /// Every member's line for `/v1/status`.
    pub fn member_status(&self) -> Vec<MemberStatus> {
        let acks = self.acks();
        self.members
            .all()
            .iter()
            .map(|m| {
                if m.id == self.members.self_id() {
                    return MemberStatus {
                        id: m.id.clone(),
                        url: m.url.clone(),
                        is_self: true,
                        reachable: None,
                        feed_id: None,
                        cursor: None,
                        last_seq: Some(*self.node.subscribe_seq().borrow()),
                        lag_changes: None,
                        lag_ms: None,
                        acked: None,
                        batches_applied: None,
                        last_error: None,
                    };
                }
                let s = self
                    .pulls
                    .get(&m.id)
                    .map(|p| p.status.borrow().clone())
                    .unwrap_or_default();
                MemberStatus {
                    id: m.id.clone(),
                    url: m.url.clone(),
                    is_self: false,
                    reachable: Some(s.reachable),
                    feed_id: (s.feed_id != 0).then(|| format!("{:016x}", s.feed_id)),
                    cursor: Some(s.cursor),
                    last_seq: Some(s.peer_last_seq),
                    lag_changes: Some(s.peer_last_seq.saturating_sub(s.cursor)),
                    lag_ms: Some(
                        s.behind_since
                            .map(|t| t.elapsed().as_millis() as u64)
                            .unwrap_or(0),
                    ),
                    acked: acks.get(&m.id).copied(),
                    batches_applied: Some(s.batches_applied),
                    last_error: s.last_error,
                }
            })
            .collect()
    }
}

/// Runs futures concurrently as tasks and collects their outputs, in order
/// (a task that panicked is left out).
pub(crate) async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
