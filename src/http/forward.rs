//! Forwarding to a key's master. A node that is not the master of a key
//! sends a write (or a master read) on to the master and relays its answer,
//! status, headers and body, so a client never needs to know who the master
//! is. When the master cannot be reached the answer is 503 naming it, and
//! nothing was stored anywhere.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST, IF_MATCH, IF_NONE_MATCH};
use hyper::http::request::Parts;
use hyper::StatusCode;

use super::error::ApiError;
use super::AppState;
use crate::client::SendError;
use crate::cluster::peer::{FORWARDED_BY, FORWARD_TIMEOUT};

/// The header carrying the `Host` the client used, on a forwarded request.
pub const FORWARDED_HOST: &str = "x-forwarded-host";

/// Headers a forwarded request keeps.
const KEPT: [HeaderName; 4] = [CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH, ACCEPT];

/// Headers an answer loses when relayed (hop-by-hop, or recomputed).
const DROPPED: [&str; 4] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
];

/// Whether this request was forwarded here by another node.
pub fn was_forwarded(parts: &Parts) -> bool {
    parts.headers.contains_key(FORWARDED_BY)
}

/// Sends the request on to `key`'s master and relays the answer, or
/// `None` when this node is the master and must serve it itself. `wait` is
/// how long the master may take beyond a plain request (a write's replica
/// timeout).
pub async fn to_master(
    state: &AppState,
    key: &str,
    parts: &Parts,
    body: Bytes,
    wait: Option<Duration>,
) -> Option<Response> {
    let members = &state.repl.members;
    let master = members.master(key);
    if master.id == members.self_id() {
        return None;
    }
    if was_forwarded(parts) {
        // The forwarding node thinks this node is the master; this node
        // does not. Serving or forwarding again could split the key.
        return Some(
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "members_disagree",
                format!(
                    "this node ({}) is not the master of the key; its member list names {}: check that every node has the same members",
                    members.self_id(),
                    master.id
                ),
            )
            .into_response(),
        );
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let mut headers: Vec<(HeaderName, HeaderValue)> = KEPT
        .iter()
        .flat_map(|name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(move |v| (name.clone(), v.clone()))
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(members.self_id()) {
        headers.push((HeaderName::from_static(FORWARDED_BY), v));
    }
    if let Some(host) = parts.headers.get(HOST) {
        headers.push((HeaderName::from_static(FORWARDED_HOST), host.clone()));
    }
    let sent = state
        .repl
        .peers
        .send(
            &master.id,
            parts.method.clone(),
            target,
            &headers,
            body,
            FORWARD_TIMEOUT + wait.unwrap_or_default(),
        )
        .await;
    Some(match sent {
        Ok(reply) => {
            let mut res = Response::new(Body::from(reply.body));
            *res.status_mut() = reply.status;
            let head = parts.method == hyper::Method::HEAD;
            for (name, value) in reply.headers.iter() {
                // A HEAD answer's Content-Length is the GET's: keep it.
                let keep = head && name == hyper::header::CONTENT_LENGTH;
                if keep || !DROPPED.contains(&name.as_str()) {
                    res.headers_mut().append(name.clone(), value.clone());
                }
            }
            res
        }
        Err(SendError::Unreachable(_, e)) => master_unavailable(
            &master.id,
            &master.url,
            &format!("it cannot be reached ({e}); nothing was stored"),
            "no",
        ),
        // Through a proxy a dead master looks like this too, so it is the
        // same 503; `applied` tells the client what it can rely on.
        Err(SendError::Failed(_, e)) => master_unavailable(
            &master.id,
            &master.url,
            &format!("the request failed on the way ({e}); it may or may not have been applied"),
            "unknown",
        ),
    })
}

/// 503 naming the master; `applied` is "no" when the request never
/// reached it, "unknown" when it may have.
pub fn master_unavailable(id: &str, url: &str, why: &str, applied: &str) -> Response {
    super::json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "error": "master_unavailable",
            "message": format!("the master of this key is {id} ({url}): {why}"),
            "master": id,
            "applied": applied,
        }),
    )
}
