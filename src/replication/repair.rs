//! Anti-entropy: a node compares its range digests with each peer's and
//! pulls what it lacks in the ranges that differ, so a replica that lost
//! records (a damaged disk, rows deleted by hand, a bug) heals without a
//! full copy. The change feeds carry every write; this is the safety net
//! for whatever they cannot see.
//!
//! One pass, for each peer:
//! 1. fetch its digests (`GET /v1/digest`) and compare them with this node's;
//! 2. for the ranges that differ, fetch the key and version of each of its
//!    records there, tombstones included (`GET /internal/v1/versions`);
//! 3. fetch the records it holds in a newer version than this node, or that
//!    this node lacks (`POST /internal/v1/records`), and apply them like
//!    replicated records: only when newer than what is stored.
//!
//! A pass only ever pulls, and only applies newer versions, so it is safe
//! while writes go on and while other nodes repair too. A range that differs
//! because this node holds something the peer lacks is the peer's to
//! repair, on its own pass. Records whose version is the same on both sides
//! but whose bytes differ cannot be settled by version; they are counted as
//! `conflicts` and logged.
//!
//! Passes run every `anti_entropy_interval_secs` (0 turns them off) and on
//! demand (`POST /v1/repair`, `ripple verify --repair`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::digest::{self, RangeDigest, RANGES};
use super::{codec, join_all, Replication};
use crate::storage::Record;

pub const VERSIONS_PATH: &str = "/internal/v1/versions";
pub const RECORDS_PATH: &str = "/internal/v1/records";
/// Header of a records answer: how many of the asked keys it covers (the
/// rest did not fit in one answer and must be asked again).
pub const COVERED: &str = "x-ripple-covered";

/// Most records one versions answer may list; a pass asks for ranges in
/// groups that stay under it.
pub const MAX_VERSIONS: usize = 200_000;

/// The body of a records request.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordsRequest {
    pub keys: Vec<String>,
}

/// What one pass did with one peer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerRepair {
    pub id: String,
    /// Whether the pass with this peer finished.
    pub complete: bool,
    /// Ranges whose digests differed.
    pub ranges_differing: Vec<String>,
    /// Records of the peer's newer than this node's (or missing here).
    pub records_fetched: usize,
    /// Of those, how many were stored (the rest arrived meanwhile).
    pub records_applied: usize,
    /// Records with the same version on both nodes but different bytes.
    pub conflicts: usize,
    pub error: Option<String>,
}

/// Runs anti-entropy passes every `anti_entropy_interval_secs` until
/// replication stops.
pub async fn run(repl: Arc<Replication>) {
    let secs = repl.config.anti_entropy_interval_secs;
    if secs == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = repl.stopped() => return,
        }
        let started = Instant::now();
        for p in pass(&repl, Duration::from_secs(secs.clamp(30, 600))).await {
            if let Some(e) = &p.error {
                tracing::warn!(peer = %p.id, error = %e, "anti-entropy pass failed");
            } else if p.records_applied > 0 || p.conflicts > 0 {
                tracing::warn!(
                    peer = %p.id,
                    ranges = p.ranges_differing.len(),
                    applied = p.records_applied,
                    conflicts = p.conflicts,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "anti-entropy repaired records the change feed had not brought"
                );
            }
        }
    }
}

/// One anti-entropy pass against every peer, each bounded by `timeout`.
pub async fn pass(repl: &Arc<Replication>, timeout: Duration) -> Vec<PeerRepair> {
    let local = match digest::compute(repl.node.storage().as_ref()).await {
        Ok(d) => Arc::new(d.ranges),
        Err(e) => {
            return repl
                .members
                .peers()
                .map(|m| PeerRepair {
                    id: m.id.clone(),
                    error: Some(format!("computing this node's digest: {e}")),
                    ..Default::default()
                })
                .collect()
        }
    };
    let runs = repl.members.peers().map(|m| {
        let repl = repl.clone();
        let id = m.id.clone();
        let local = local.clone();
        async move {
            let mut report = PeerRepair {
                id: id.clone(),
                ..Default::default()
            };
            match tokio::time::timeout(timeout, with_peer(&repl, &id, &local, &mut report)).await {
                Ok(Ok(())) => report.complete = true,
                Ok(Err(e)) => report.error = Some(e),
                Err(_) => report.error = Some(format!("timed out after {timeout:?}")),
            }
            report
        }
    });
    join_all(runs).await
}

/// A pass against one peer, filling `report` as it goes.
async fn with_peer(
    repl: &Replication,
    peer: &str,
    local: &[RangeDigest],
    report: &mut PeerRepair,
) -> Result<(), String> {
    // 1. Digests.
    let reply = send(repl, peer, Method::GET, "/v1/digest", &[], Bytes::new()).await?;
    let theirs: DigestAnswer = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the peer's digest is not valid JSON: {e}"))?;
    let theirs = digest::parse_json(&theirs.ranges)?;
    let differing: Vec<usize> = (0..RANGES).filter(|r| local[*r] != theirs[*r]).collect();
    report.ranges_differing = differing.iter().map(|r| digest::range_name(*r)).collect();

    // 2. Versions, in groups of ranges that fit one answer.
    let storage = repl.node.storage();
    let mut wanted: Vec<String> = Vec::new();
    for group in groups(&differing, &theirs) {
        let names: Vec<String> = group.iter().map(|r| digest::range_name(*r)).collect();
        let path = format!("{VERSIONS_PATH}?ranges={}", names.join(","));
        let reply = send(repl, peer, Method::GET, &path, &[], Bytes::new()).await?;
        let listed = codec::decode(reply.body).map_err(|e| format!("bad versions answer: {e}"))?;
        for entry in listed {
            let theirs = entry.record;
            let ours = storage.get(&theirs.key).await.map_err(|e| e.to_string())?;
            match ours {
                Some(o) if o.record.version > theirs.version => {}
                Some(o) if o.record.version == theirs.version => {
                    let ours_hash = if o.record.tombstone {
                        Vec::new()
                    } else {
                        digest::record_hash(&o.record).to_be_bytes().to_vec()
                    };
                    if o.record.tombstone != theirs.tombstone || ours_hash != theirs.value[..] {
                        report.conflicts += 1;
                        tracing::warn!(key = %theirs.key, peer, "same version, different bytes");
                    }
                }
                _ => wanted.push(theirs.key),
            }
        }
    }

    // 3. Records, as many per request as the peer's batch limits allow.
    let mut rest: &[String] = &wanted;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(repl.config.batch_max_records)];
        let body = serde_json::to_vec(&RecordsRequest {
            keys: chunk.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        let (covered, frame) = send_records(repl, peer, Bytes::from(body)).await?;
        if covered == 0 || covered > chunk.len() {
            return Err(format!(
                "the peer covered {covered} of {} keys asked",
                chunk.len()
            ));
        }
        rest = &rest[covered..];
        let records = codec::decode(frame).map_err(|e| format!("bad records answer: {e}"))?;
        let mut newer: Vec<Record> = Vec::with_capacity(records.len());
        for entry in records {
            let theirs = entry.record;
            let ours = storage.get(&theirs.key).await.map_err(|e| e.to_string())?;
            match ours {
                // Stored meanwhile, by the feed or another pass.
                Some(o) if o.record.version >= theirs.version => {}
                _ => newer.push(theirs),
            }
        }
        report.records_fetched += newer.len();
        if !newer.is_empty() {
            report.records_applied += repl
                .node
                .apply_repaired(newer)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Splits `ranges` into groups whose record counts (as the peer reports
/// them) stay under `MAX_VERSIONS`, so each fits one versions answer.
fn groups(ranges: &[usize], theirs: &[RangeDigest]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut count = 0u64;
    for r in ranges {
        let n = theirs[*r].records;
        match out.last_mut() {
            // Tombstones are not in the counts: leave room for them.
            Some(g) if count + n <= MAX_VERSIONS as u64 / 2 => {
                g.push(*r);
                count += n;
            }
            _ => {
                out.push(vec![*r]);
                count = n;
            }
        }
    }
    out
}

/// The part of a `/v1/digest` answer a pass reads.
#[derive(Deserialize)]
struct DigestAnswer {
    ranges: Vec<digest::RangeJson>,
}

/// Sends a request to `peer`; the answer, which must be 200.
async fn send(
    repl: &Replication,
    peer: &str,
    method: Method,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<crate::client::Reply, String> {
    let reply = repl
        .peers
        .send(peer, method, path, headers, body, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    if reply.status != StatusCode::OK {
        return Err(format!(
            "{path} answered {}: {}",
            reply.status,
            reply.error_message()
        ));
    }
    Ok(reply)
}

async fn send_records(
    repl: &Replication,
    peer: &str,
    body: Bytes,
) -> Result<(usize, Bytes), String> {
    let headers = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    let reply = send(repl, peer, Method::POST, RECORDS_PATH, &headers, body).await?;
    let covered = reply
        .headers
        .get(HeaderName::from_static(COVERED))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| format!("the records answer has no valid {COVERED} header"))?;
    Ok((covered, reply.body))
}

/// Serves a records request: the stored record of each asked key, in order,
/// tombstones included and absent keys left out, until the answer holds
/// `max_records` records or `max_bytes` of values (one always fits).
/// Returns the entries and how many keys they cover.
pub async fn records(
    repl: &Replication,
    keys: &[String],
) -> Result<(Vec<crate::storage::Entry>, usize), crate::storage::StorageError> {
    let storage = repl.node.storage();
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut seen = HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        if !seen.insert(key.as_str()) {
            continue;
        }
        if let Some(entry) = storage.get(key).await? {
            let size = entry.record.value.len() + key.len();
            if !out.is_empty() && bytes + size > repl.config.batch_max_bytes {
                return Ok((out, i));
            }
            bytes += size;
            out.push(entry);
        }
    }
    Ok((out, keys.len()))
}
