//! `GET /v1/status` (this node and every member: reachable, cursor, lag,
//! tombstones) and `POST /v1/sync` (pull from every peer now and wait until
//! caught up: the seed's sync.py, on demand).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use hyper::StatusCode;

use super::error::ApiError;
use super::{json_response, parse_query, parse_timeout_ms, AppState};

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

pub async fn sync(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let mut timeout = SYNC_TIMEOUT;
    for (name, value) in parse_query(req.uri().query())? {
        match name.as_str() {
            "timeout_ms" => timeout = parse_timeout_ms(&value, MAX_SYNC_TIMEOUT)?,
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("unknown query parameter {other:?}; expected timeout_ms"),
                ))
            }
        }
    }
    let peers = state.repl.sync(timeout).await;
    let caught_up = peers.iter().all(|p| p.caught_up);
    let status = if caught_up {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    Ok(json_response(
        status,
        &serde_json::json!({"node_id": state.node.id(), "caught_up": caught_up, "peers": peers}),
    ))
}
