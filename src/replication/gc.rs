//! Tombstone collection. A tombstone may leave this node's store once every
//! peer's cursor on this node's feed has passed it (every peer has applied
//! the delete, or something newer) and it is older than the grace period.
//!
//! The grace period covers what a cursor cannot see: a feed answer from a
//! third node still in flight with an older value of the key. Such an
//! answer is bounded by the request timeout (long poll + 30 s), so the
//! default grace of one hour leaves a wide margin, and also absorbs clock
//! skew between the master that wrote the tombstone and this node.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Replication;

/// Tombstones removed per transaction.
const PURGE_CHUNK: usize = 10_000;

/// Collects tombstones every `gc_interval_secs` until replication stops.
pub async fn run(repl: Arc<Replication>) {
    let interval = Duration::from_secs(repl.config.gc_interval_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = repl.stopped() => return,
        }
        match collect(&repl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "tombstones collected"),
            Err(e) => tracing::warn!(error = %e, "tombstone collection failed"),
        }
    }
}

/// One collection pass; returns how many tombstones went.
pub async fn collect(repl: &Replication) -> Result<usize, crate::storage::StorageError> {
    let storage = repl.node.storage();
    let acks = repl.acks();
    // A peer never heard from since this node started counts as 0.
    let safe = repl
        .members
        .peers()
        .map(|m| acks.get(&m.id).copied().unwrap_or(0))
        .min();
    let safe = match safe {
        Some(s) => s,
        None => storage.last_seq().await?,
    };
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
