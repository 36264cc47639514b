//! Tombstone collection. A tombstone may leave this node's store once
//! (1) every peer's cursor on this node's feed has passed it: every peer
//! has applied the delete, or something newer;
//! (2) since (1) was seen, this node's puller on every peer has applied the
//! answer to a request sent afterwards: an answer a peer made before it
//! applied the delete (with the old value in it) can no longer be on its
//! way here, since a puller applies answers in order;
//! (3) it is older than the grace period, a margin for operators (a node
//! restored from a backup, clock skew between masters).
//!
//! Each pass therefore purges up to the acknowledged seq it saw on the
//! previous pass, once every puller has completed a round since then.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Replication;

/// Tombstones removed per transaction.
const PURGE_CHUNK: usize = 10_000;

/// Collects tombstones every `gc_interval_secs` until replication stops.
pub async fn run(repl: Arc<Replication>) {
    let interval = Duration::from_secs(repl.config.gc_interval_secs);
    // The acknowledged seq seen on the previous pass, and when.
    let mut seen: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = repl.stopped() => return,
        }
        // Wait, pass after pass, for every puller to finish a round since
        // the acknowledgements were seen; then purge and look again.
        if let Some((safe, since)) = seen {
            if !repl.rounds_done_since(since) {
                continue;
            }
            match collect(&repl, safe).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "tombstones collected"),
                Err(e) => tracing::warn!(error = %e, "tombstone collection failed"),
            }
        }
        let now = Instant::now();
        seen = match acknowledged(&repl).await {
            Ok(acked) => Some((acked, now)),
            Err(e) => {
                tracing::warn!(error = %e, "tombstone collection failed");
                None
            }
        };
    }
}

/// The seq every peer has applied this node's feed up to (this node's last
/// seq when it has no peers). A peer not heard from since start counts as 0.
async fn acknowledged(repl: &Replication) -> Result<u64, crate::storage::StorageError> {
    let acks = repl.acks();
    match repl
        .members
        .peers()
        .map(|m| acks.get(&m.id).copied().unwrap_or(0))
        .min()
    {
        Some(s) => Ok(s),
        None => repl.node.storage().last_seq().await,
    }
}

/// Purges tombstones up to `safe` that are older than the grace period;
/// returns how many went.
pub async fn collect(repl: &Replication, safe: u64) -> Result<usize, crate::storage::StorageError> {
    let storage = repl.node.storage();
    let grace_ms = repl.config.tombstone_grace_secs.saturating_mul(1000);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let older_than = now_ms.saturating_sub(grace_ms) << 16;
    let mut total = 0;
    loop {
        let n = storage
            .purge_tombstones(safe, older_than, PURGE_CHUNK)
            .await?;
        total += n;
        if n < PURGE_CHUNK {
            return Ok(total);
        }
    }
}
