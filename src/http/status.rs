//! `GET /v1/status` (this node and every member: reachable, cursor, lag,
//! tombstones), `POST /v1/sync` (pull from every peer now and wait until
//! caught up: the seed's sync.py, on demand), `GET /v1/digest` (this node's
//! range digests, for `ripple verify`) and `POST /v1/repair` (an
//! anti-entropy pass now).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use hyper::StatusCode;

use super::error::ApiError;
use super::{json_response, parse_query, parse_timeout_ms, AppState};
use crate::replication::{digest, repair};

/// Default and longest wait of a sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let storage = state.node.storage();
    let last_seq = storage
        .last_seq()
        .await
        .map_err(crate::node::NodeError::from)?;
    let tombstones = storage
        .tombstone_count()
        .await
        .map_err(crate::node::NodeError::from)?;
    let feed_id = storage
        .feed_id()
        .await
        .map_err(crate::node::NodeError::from)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "node_id": state.node.id(),
            "feed_id": format!("{feed_id:016x}"),
            "last_seq": last_seq,
            "tombstones": tombstones,
            "members": state.repl.member_status(),
        }),
    ))
}

/// Default and longest wait of a repair pass.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_REPAIR_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads an optional `timeout_ms` (the only parameter of sync and repair).
fn timeout_param(req: &Request, default: Duration, max: Duration) -> Result<Duration, ApiError> {
    let mut timeout = default;
    for (name, value) in parse_query(req.uri().query())? {
        match name.as_str() {
            "timeout_ms" => timeout = parse_timeout_ms(&value, max)?,
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("unknown query parameter {other:?}; expected timeout_ms"),
                ))
            }
        }
    }
    Ok(timeout)
}

pub async fn digest(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("/v1/digest takes no query parameters, not {q:?}"),
        ));
    }
    let d = digest::compute(state.node.storage().as_ref())
        .await
        .map_err(crate::node::NodeError::from)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "node_id": state.node.id(),
            "upto": d.upto,
            "records": d.records(),
            "ranges": d.to_json(),
        }),
    ))
}

/// The status of a sync or repair answer: 200 when it finished with every
/// peer, 504 when not (the body says which).
fn finished(with_every_peer: bool) -> StatusCode {
    if with_every_peer {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    }
}

pub async fn repair(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let timeout = timeout_param(&req, REPAIR_TIMEOUT, MAX_REPAIR_TIMEOUT)?;
    let peers = repair::pass(&state.repl, timeout).await;
    let complete = peers.iter().all(|p| p.complete);
    Ok(json_response(
        finished(complete),
        &serde_json::json!({
            "node_id": state.node.id(),
            "complete": complete,
            "records_applied": peers.iter().map(|p| p.records_applied).sum::<usize>(),
            "peers": peers,
        }),
    ))
}

pub async fn sync(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let timeout = timeout_param(&req, SYNC_TIMEOUT, MAX_SYNC_TIMEOUT)?;
    let peers = state.repl.sync(timeout).await;
    let caught_up = peers.iter().all(|p| p.caught_up);
    Ok(json_response(
        finished(caught_up),
        &serde_json::json!({"node_id": state.node.id(), "caught_up": caught_up, "peers": peers}),
    ))
}
