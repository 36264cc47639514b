//! The puller: one task per peer that follows the peer's feed from this
//! node's durable cursor, applies each batch with the new cursor in one
//! transaction, and long-polls when caught up, so a write reaches the peers
//! in milliseconds. Under a stream of writes (an answer with more than one
//! change) it lingers a moment after the answer (`batch_linger_ms`), so
//! that one answer and one commit carry several writes. When the peer
//! cannot be reached it backs off (up to a few seconds, cut short by
//! `sync`) and resumes from the cursor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::feed::{self, FeedQuery};
use super::Replication;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The cursor's name in storage: per peer and per feed id, so a peer whose
/// data was wiped (a new feed id) is followed from the start again.
pub fn cursor_name(peer: &str, feed_id: u64) -> String {
    format!("{peer}#{feed_id:016x}")
}

/// Follows `peer`'s feed until replication stops.
pub async fn run(repl: Arc<Replication>, peer: String) {
    let Some(pull) = repl.pull(&peer).cloned() else {
        return;
    };
    let storage = repl.node.storage().clone();
    let mut feed_id = 0u64;
    let mut cursor = 0u64;
    let mut backoff = MIN_BACKOFF;
    // Whether this node has caught up with the peer's feed since it
    // started: from then on it can leave out its own records (see
    // `FeedQuery::skip_own`).
    let mut caught_up = false;
    let linger = Duration::from_millis(repl.config.batch_linger_ms);
    while !repl.is_stopped() {
        let q = FeedQuery {
            after: cursor,
            limit: repl.config.batch_max_records,
            wait: Duration::from_millis(repl.config.long_poll_ms),
            from: Some(repl.members.self_id().to_owned()),
            feed: feed_id,
            skip_own: caught_up,
        };
        let sent = Instant::now();
        let result = tokio::select! {
            r = feed::fetch(&repl.peers, &peer, &q) => r,
            _ = repl.stopped() => break,
        };
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                pull.status.send_modify(|s| {
                    s.reachable = false;
                    s.last_error = Some(e.to_string());
                    s.behind_since.get_or_insert_with(Instant::now);
                });
                tracing::debug!(%peer, error = %e, "feed request failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = pull.wake.notified() => {}
                    _ = repl.stopped() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if answer.feed_id != feed_id {
            // First contact, or the peer's data was wiped: take the cursor
            // this node keeps for that feed.
            match storage.cursor(&cursor_name(&peer, answer.feed_id)).await {
                Ok(c) => {
                    feed_id = answer.feed_id;
                    cursor = c;
                    pull.status.send_modify(|s| {
                        s.reachable = true;
                        s.feed_id = feed_id;
                        s.cursor = c;
                        s.peer_last_seq = answer.last_seq;
                    });
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot read the cursor");
                    tokio::time::sleep(backoff).await;
                }
            }
            continue;
        }
        let had_records = !answer.entries.is_empty();
        // More than one change since the last request: writes come faster
        // than this puller fetches them one by one.
        let streaming = answer.entries.len() > 1;
        if answer.upto > cursor || had_records {
            let records = answer.entries.into_iter().map(|e| e.record).collect();
            let name = cursor_name(&peer, feed_id);
            if let Err(e) = repl.node.apply_remote(&name, records, answer.upto).await {
                tracing::warn!(%peer, error = %e, "cannot apply a feed batch");
                pull.status
                    .send_modify(|s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            cursor = cursor.max(answer.upto);
        }
        caught_up |= cursor >= answer.last_seq;
        pull.status.send_modify(|s| {
            s.reachable = true;
            s.last_error = None;
            s.cursor = cursor;
            s.peer_last_seq = answer.last_seq.max(cursor);
            s.applied_round = Some(sent);
            s.batches_applied += u64::from(had_records);
            if cursor >= answer.last_seq {
                s.behind_since = None;
            } else {
                s.behind_since.get_or_insert_with(Instant::now);
            }
        });
        // Caught up under a stream of writes: let the next ones gather
        // rather than fetch and commit each one or two on their own;
        // unless a write on the peer waits for this batch's acknowledgement,
        // which the next request carries. A lone change does not linger:
        // at low rates the long poll alone sends each write at once.
        if streaming && cursor >= answer.last_seq && !answer.ack_wanted && !linger.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = pull.wake.notified() => {}
                _ = repl.stopped() => break,
            }
        }
    }
}
