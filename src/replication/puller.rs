//! The puller: one task per peer that follows the peer's feed from this
//! node's durable cursor, applies each batch with the new cursor in one
//! transaction, and long-polls when caught up, so a write reaches the peers
//! in milliseconds. Under a stream of writes (an answer with more than one
//! change) it lingers a moment after the answer (`batch_linger_ms`), so
//! that one answer and one commit carry several writes. When the peer
//! cannot be reached it backs off (up to a few seconds, cut short by
//! `sync`) and resumes from the cursor.
//!
//! The puller does not wait for a batch to be durable here before it asks
//! for the next: once the engine has written the batch to its log (its
//! records are readable then, see `Node::apply_remote`), the next request
//! goes out, carrying the durable cursor as its acknowledgement (`acked`)
//! and asking after the batch. Batches reach the engine in order, and one
//! is handed over only after the one before was written, so a batch that
//! fails fails every later one (a failed log sync stops the log): the
//! puller then goes back to its durable cursor. When the peer has a write
//! waiting for acknowledgements (`ack_wanted`) the puller waits for
//! durability first, so that its next request acknowledges at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::feed::{self, FeedQuery};
use super::{Pull, Replication};
use crate::storage::StorageError;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The cursor's name in storage: per peer and per feed id, so a peer whose
/// data was wiped (a new feed id) is followed from the start again.
pub fn cursor_name(peer: &str, feed_id: u64) -> String {
    format!("{peer}#{feed_id:016x}")
}

/// A batch handed to the engine, not yet known to be durable.
struct Applying {
    task: tokio::task::JoinHandle<Result<usize, StorageError>>,
    upto: u64,
}

/// Takes the batches that are done (all of them, waiting, when `all`), in
/// order, moving `cursor` past each durable one. After one that failed,
/// waits for the rest and returns its error.
async fn settle(
    applying: &mut VecDeque<Applying>,
    cursor: &mut u64,
    all: bool,
) -> Result<(), String> {
    while applying
        .front()
        .is_some_and(|a| all || a.task.is_finished())
    {
        let Some(a) = applying.pop_front() else {
            break;
        };
        let failed = match a.task.await {
            Ok(Ok(_)) => {
                *cursor = (*cursor).max(a.upto);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("a feed batch's task failed: {e}"),
        };
        // Every later batch was handed over after this one was written,
        // so it failed too: its log stopped (see the module comment).
        for rest in applying.drain(..) {
            let _ = rest.task.await;
        }
        return Err(failed);
    }
    Ok(())
}

/// Follows `peer`'s feed until replication stops.
pub async fn run(repl: Arc<Replication>, peer: String) {
    let Some(pull) = repl.pull(&peer).cloned() else {
        return;
    };
    let storage = repl.node.storage().clone();
    let mut feed_id = 0u64;
    // The durable cursor, and where the next request reads from: past
    // the batches written but not yet durable.
    let mut cursor = 0u64;
    let mut read_to = 0u64;
    let mut applying: VecDeque<Applying> = VecDeque::new();
    let mut backoff = MIN_BACKOFF;
    // Whether this node has caught up with the peer's feed since it
    // started: from then on it can leave out its own records (see
    // `FeedQuery::skip_own`).
    let mut caught_up = false;
    let linger = Duration::from_millis(repl.config.batch_linger_ms);
    while !repl.is_stopped() {
        if let Err(e) = settle(&mut applying, &mut cursor, false).await {
            read_to = cursor;
            apply_failed(&repl, &pull, &peer, &e, &mut backoff).await;
            continue;
        }
        let q = FeedQuery {
            after: read_to,
            acked: Some(cursor),
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
            // this node keeps for that feed, once nothing is in flight.
            let _ = settle(&mut applying, &mut cursor, true).await;
            match storage.cursor(&cursor_name(&peer, answer.feed_id)).await {
                Ok(c) => {
                    feed_id = answer.feed_id;
                    cursor = c;
                    read_to = c;
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
        let mut outcome = Ok(());
        if answer.upto > read_to || had_records {
            let records = answer.entries.into_iter().map(|e| e.record).collect();
            let name = cursor_name(&peer, feed_id);
            let written = Arc::new(tokio::sync::Notify::new());
            let (node, on_written, upto) = (repl.node.clone(), written.clone(), answer.upto);
            let status = pull.clone();
            let mut task = tokio::spawn(async move {
                let r = node
                    .apply_remote(&name, records, upto, move || on_written.notify_one())
                    .await;
                if r.is_ok() {
                    // Durable, as is every batch before it: shown at once,
                    // not when the next (perhaps long-polling) answer comes.
                    status.status.send_modify(|s| {
                        if s.feed_id == feed_id {
                            s.cursor = s.cursor.max(upto);
                            s.applied_round = s.applied_round.max(Some(sent));
                        }
                    });
                }
                r
            });
            // The next batch may follow once this one is written.
            let finished = tokio::select! {
                _ = written.notified() => None,
                r = &mut task => Some(r),
            };
            match finished {
                None => applying.push_back(Applying { task, upto }),
                Some(r) => {
                    // Done already, so every batch before it is too.
                    outcome = settle(&mut applying, &mut cursor, true).await;
                    if outcome.is_ok() {
                        outcome = match r {
                            Ok(Ok(_)) => {
                                cursor = cursor.max(upto);
                                Ok(())
                            }
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(format!("a feed batch's task failed: {e}")),
                        };
                    }
                }
            }
            read_to = read_to.max(upto);
        }
        if outcome.is_ok() && !applying.is_empty() && (answer.ack_wanted || !had_records) {
            // A write on the peer waits for this node's acknowledgement,
            // which the next request carries; or nothing came, and the
            // round counts as applied only once what came before is.
            outcome = settle(&mut applying, &mut cursor, true).await;
        }
        if let Err(e) = outcome {
            read_to = cursor;
            apply_failed(&repl, &pull, &peer, &e, &mut backoff).await;
            continue;
        }
        caught_up |= read_to >= answer.last_seq;
        pull.status.send_modify(|s| {
            s.reachable = true;
            s.last_error = None;
            s.cursor = s.cursor.max(cursor);
            s.peer_last_seq = answer.last_seq.max(read_to);
            if applying.is_empty() {
                s.applied_round = Some(sent);
            }
            s.batches_applied += u64::from(had_records);
            if read_to >= answer.last_seq {
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
        if streaming && read_to >= answer.last_seq && !answer.ack_wanted && !linger.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(linger) => {}
                _ = pull.wake.notified() => {}
                _ = repl.stopped() => break,
            }
        }
    }
    // What is in flight finishes (or fails) on its own; the cursor it
    // stores is durable with it.
    let _ = settle(&mut applying, &mut cursor, true).await;
}

/// After a batch failed to apply: shows the error and waits out the
/// backoff (doubling it), or until replication stops, before the puller
/// reads again from its durable cursor.
async fn apply_failed(
    repl: &Replication,
    pull: &Pull,
    peer: &str,
    error: &str,
    backoff: &mut Duration,
) {
    tracing::warn!(%peer, %error, "cannot apply a feed batch");
    pull.status
        .send_modify(|s| s.last_error = Some(error.to_owned()));
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = repl.stopped() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}
