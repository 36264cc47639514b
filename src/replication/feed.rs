//! The change feed over HTTP: `GET /internal/v1/feed`, what a node answers
//! its peers, and the client side a puller uses.
//!
//! Query: `after` (the asker's cursor), `limit` (most records; 0 asks only
//! for the headers), `wait_ms` (how long to wait for a change when there is
//! none after `after`), `from` (the asker's node id) and `feed` (the feed id
//! the cursor belongs to). Request header `x-ripple-skip-own: 1` leaves
//! out the records the asker made as master (`FeedQuery::skip_own`), and
//! `x-ripple-acked: N` gives the asker's durable cursor when it reads ahead
//! of it (`FeedQuery::acked`). The
//! answer is a binary frame (`codec`) with headers:
//! - `x-ripple-feed-id`: this node's feed id. When it differs from the
//!   asker's `feed`, the answer carries no records and the asker starts over
//!   with the cursor it keeps for this feed id (this node's data was wiped).
//! - `x-ripple-feed-upto`: the seq up to which the answer covers the feed:
//!   the asker stores it as its new cursor with the records, even when
//!   there are none (seqs whose records were replaced or purged).
//! - `x-ripple-last-seq`: this node's highest seq, for lag figures.
//! - `x-ripple-ack-wanted`: `1` when a write here waits for its replicas
//!   (`replicas=`): the asker then asks again at once, as its next request
//!   is what acknowledges the batch, rather than linger.
//!
//! A request whose `from` and `feed` match records `x-ripple-acked` (else
//! `after`) as that peer's acknowledgement (see `Replication::record_ack`).

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::{codec, Replication};
use crate::client::SendError;
use crate::cluster::Peers;
use crate::storage::{Entry, StorageError};

pub const PATH: &str = "/internal/v1/feed";
pub const FEED_ID: &str = "x-ripple-feed-id";
pub const UPTO: &str = "x-ripple-feed-upto";
pub const LAST_SEQ: &str = "x-ripple-last-seq";
pub const ACK_WANTED: &str = "x-ripple-ack-wanted";

/// The longest a feed request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The longest a request that skips the asker's records waits on once
/// only those came: then it answers with the cursor alone, so the
/// asker's cursor (and a `sync` waiting on it) still moves soon.
const SKIP_WAIT: Duration = Duration::from_millis(50);

/// Request header: with `1`, the answer leaves out the records whose
/// version the asker (`from`) made, as their master. See `FeedQuery`.
pub const SKIP_OWN: &str = "x-ripple-skip-own";

/// Request header: the asker's durable cursor, when below `after`. A
/// header rather than a query parameter, so that a node of an earlier
/// version (which refuses unknown parameters) still answers; it records
/// `after` instead.
pub const ACKED: &str = "x-ripple-acked";

/// A feed request's parameters.
#[derive(Debug, Default, Clone)]
pub struct FeedQuery {
    pub after: u64,
    pub limit: usize,
    pub wait: Duration,
    pub from: Option<String>,
    pub feed: u64,
    /// The asker's durable cursor, when below `after`: a puller asks for
    /// the next changes once it has written a batch to its log, before
    /// the batch is durable (see `puller`), and only its durable cursor
    /// acknowledges anything.
    pub acked: Option<u64>,
    /// Leave out the records whose version `from` made: it holds each of
    /// them (or a newer version) durably, since a master answers a write
    /// only once it is durable, unless its data went back (wiped or
    /// restored), which only happens across a restart. So a puller asks
    /// for them only until it has caught up with the peer once since its
    /// node started. Each write then crosses the network four times in a
    /// cluster of three instead of six. A node that does not know the
    /// header sends them anyway, which costs only the transfer.
    pub skip_own: bool,
}

/// A feed answer.
#[derive(Debug)]
pub struct FeedAnswer {
    pub feed_id: u64,
    pub entries: Vec<Entry>,
    pub upto: u64,
    pub last_seq: u64,
    /// Whether a write on the answering node waits for acknowledgements.
    pub ack_wanted: bool,
}

/// Serves a feed request.
pub async fn read(repl: &Replication, q: &FeedQuery) -> Result<FeedAnswer, StorageError> {
    let storage = repl.node.storage();
    let mut feed_id = storage.feed_id().await?;
    if q.feed == feed_id && q.after > storage.last_seq().await? {
        // The asker has applied more of this feed than it holds: the store
        // went back in time (restored from a backup). Start a new feed, so
        // every peer follows it from the beginning instead of skipping the
        // seqs it will take again.
        feed_id = storage.new_feed_id().await?;
        tracing::warn!(
            peer = q.from.as_deref().unwrap_or("?"),
            after = q.after,
            "a peer is ahead of this node's feed (restored from a backup?): started a new feed"
        );
    }
    if q.feed != feed_id || q.limit == 0 {
        // A cursor for another feed, or only the headers asked for.
        return Ok(FeedAnswer {
            feed_id,
            entries: Vec::new(),
            upto: 0,
            last_seq: storage.last_seq().await?,
            ack_wanted: false,
        });
    }
    if let Some(from) = &q.from {
        if repl.members.get(from).is_some() && from != repl.members.self_id() {
            repl.record_ack(from, q.acked.map_or(q.after, |a| a.min(q.after)));
        }
    }
    let skip = match (&q.from, q.skip_own) {
        (Some(from), true) => Some(from.as_str()),
        _ => None,
    };
    let mut seq = repl.node.subscribe_seq();
    let mut deadline = tokio::time::Instant::now() + q.wait.min(MAX_WAIT);
    let mut after = q.after;
    let mut skipped_any = false;
    loop {
        if *seq.borrow() <= after && !q.wait.is_zero() {
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, seq.wait_for(|s| *s > after)) => {}
                _ = repl.stopped() => {}
            }
        }
        // The last seq is read before the records: every change up to it
        // is committed, so the scan below sees it (or its replacement).
        let last_seq = storage.last_seq().await?;
        let mut entries = storage.changes_since(after, q.limit).await?;
        let full = entries.len() >= q.limit;
        let mut bytes = 0;
        let mut keep = 0;
        for e in &entries {
            if keep > 0 && bytes + e.record.value.len() > repl.config.batch_max_bytes {
                break;
            }
            bytes += e.record.value.len() + e.record.key.len();
            keep += 1;
        }
        let cut = keep < entries.len();
        entries.truncate(keep);
        let last_entry = entries.last().map(|e| e.seq);
        let upto = if full || cut {
            last_entry.unwrap_or(after)
        } else {
            last_seq.max(last_entry.unwrap_or(0)).max(after)
        };
        if let Some(from) = skip {
            entries.retain(|e| e.record.version.node != from);
            // Only the asker's own records were new: wait on for others,
            // rather than answer with nothing but a cursor to store.
            if entries.is_empty() && upto > after {
                let now = tokio::time::Instant::now();
                if !skipped_any {
                    skipped_any = true;
                    deadline = deadline.min(now + SKIP_WAIT);
                }
                if now < deadline && !repl.is_stopped() {
                    after = upto;
                    // A backlog of only the asker's records is scanned
                    // without waiting: let the worker's other tasks run.
                    tokio::task::yield_now().await;
                    continue;
                }
            }
        }
        return Ok(FeedAnswer {
            feed_id,
            entries,
            upto,
            last_seq,
            ack_wanted: repl.acks_awaited(),
        });
    }
}

/// Why a feed could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("{0}")]
    Bad(String),
}

/// Asks peer `id` for its feed.
pub async fn fetch(peers: &Peers, id: &str, q: &FeedQuery) -> Result<FeedAnswer, FetchError> {
    let mut path = format!(
        "{PATH}?after={}&limit={}&wait_ms={}&feed={}",
        q.after,
        q.limit,
        q.wait.as_millis(),
        q.feed
    );
    if let Some(from) = &q.from {
        path.push_str(&format!("&from={from}"));
    }
    let timeout = q.wait + Duration::from_secs(30);
    let mut headers = Vec::new();
    if q.skip_own {
        headers.push((
            hyper::header::HeaderName::from_static(SKIP_OWN),
            hyper::header::HeaderValue::from_static("1"),
        ));
    }
    if let Some(acked) = q.acked.filter(|a| *a < q.after) {
        headers.push((
            hyper::header::HeaderName::from_static(ACKED),
            hyper::header::HeaderValue::from(acked),
        ));
    }
    let reply = peers
        .send(id, Method::GET, &path, &headers, Bytes::new(), timeout)
        .await?;
    if reply.status != StatusCode::OK {
        return Err(FetchError::Bad(format!(
            "{id} answered {}: {}",
            reply.status,
            reply.error_message()
        )));
    }
    let header = |name: &str| -> Result<u64, FetchError> {
        reply
            .header(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| FetchError::Bad(format!("{id} sent no valid {name} header")))
    };
    let feed_id = header(FEED_ID)?;
    let upto = header(UPTO)?;
    let last_seq = header(LAST_SEQ)?;
    let ack_wanted = reply.header(ACK_WANTED) == Some("1");
    let entries = codec::decode(reply.body.clone())
        .map_err(|e| FetchError::Bad(format!("{id} sent a bad feed frame: {e}")))?;
    Ok(FeedAnswer {
        feed_id,
        entries,
        upto,
        last_seq,
        ack_wanted,
    })
}

/// Peer `id`'s highest seq, asked without waiting.
pub async fn peer_last_seq(peers: &Peers, id: &str, timeout: Duration) -> Result<u64, FetchError> {
    let q = FeedQuery {
        wait: Duration::ZERO,
        ..Default::default()
    };
    let answer = tokio::time::timeout(timeout, fetch(peers, id, &q))
        .await
        .map_err(|_| FetchError::Bad(format!("{id} did not answer within {timeout:?}")))??;
    Ok(answer.last_seq)
}
