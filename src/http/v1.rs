//! The v1 API: `/v1/kv/{key}` (GET, HEAD, PUT, DELETE) and `/v1/kv`
//! (listing by prefix, paged). Documented in docs/API.md and
//! docs/openapi.yaml.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG};
use hyper::StatusCode;

use super::error::ApiError;
use super::{json_response, key_from_path, keypath, preconditions, read_body, AppState};
use crate::node::version::Version;
use crate::node::{NodeError, DEFAULT_CONTENT_TYPE};

const PREFIX: &str = "/v1/kv/";

/// Default and largest page of a listing.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// Longest content type a client may store.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

fn etag(version: &Version) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `GET /v1/kv/{key}` (and `HEAD`, which axum answers from this handler
/// without the body).
pub async fn get(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let key = key_from_path(req.uri().path(), PREFIX)?;
    let pre = preconditions(req.headers())?;
    let record =
        state.node.get(&key).await?.ok_or_else(|| {
            ApiError::not_found(format!("no value is stored under the key {key:?}"))
        })?;
    if let Some(list) = &pre.if_match {
        if !list.matches(Some(&record.version)) {
            return Err(NodeError::PreconditionFailed(
                "If-Match does not match the current version",
            )
            .into());
        }
    }
    if let Some(list) = &pre.if_none_match {
        if list.matches(Some(&record.version)) {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            res.headers_mut().insert(ETAG, etag(&record.version));
            return Ok(res);
        }
    }
    let mut res = Response::new(Body::from(record.value));
    let ct = HeaderValue::from_str(&record.content_type)
        .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    res.headers_mut().insert(CONTENT_TYPE, ct);
    res.headers_mut().insert(ETAG, etag(&record.version));
    Ok(res)
}

/// `PUT /v1/kv/{key}`: 201 when new, 200 when replaced.
pub async fn put(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let key = key_from_path(parts.uri.path(), PREFIX)?;
    state.node.check_key(&key)?;
    let pre = preconditions(&parts.headers)?;
    let content_type = match parts.headers.get(CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(v) => {
            let text = v
                .to_str()
                .ok()
                .filter(|t| t.len() <= MAX_CONTENT_TYPE_BYTES && !t.is_empty());
            text.ok_or_else(|| {
                ApiError::bad_request(
                    "bad_header",
                    format!("Content-Type must be 1 to {MAX_CONTENT_TYPE_BYTES} visible ASCII characters"),
                )
            })?
            .to_owned()
        }
    };
    let value = read_body(body, &parts.headers, state.node.limits().max_value_bytes).await?;
    let outcome = state.node.put(&key, value, content_type, &pre).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut res = json_response(
        status,
        &serde_json::json!({"key": key, "version": outcome.version.to_string()}),
    );
    res.headers_mut().insert(ETAG, etag(&outcome.version));
    Ok(res)
}

/// `DELETE /v1/kv/{key}`: 204; 404 when there is nothing to delete.
pub async fn delete(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let key = key_from_path(req.uri().path(), PREFIX)?;
    let pre = preconditions(req.headers())?;
    let outcome = state.node.delete(&key, &pre).await.map_err(|e| match e {
        NodeError::NotFound => {
            ApiError::not_found(format!("no value is stored under the key {key:?}"))
        }
        e => e.into(),
    })?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(ETAG, etag(&outcome.version));
    Ok(res)
}

/// `/v1/kv/` with nothing after it.
pub async fn empty_key() -> ApiError {
    NodeError::EmptyKey.into()
}

/// `GET /v1/kv?prefix=P&limit=N&cursor=C`.
pub async fn list(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let mut prefix = String::new();
    let mut limit = DEFAULT_LIMIT;
    let mut cursor: Option<String> = None;
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = keypath::decode_query(value).map_err(|e| {
            ApiError::bad_request("bad_query", format!("query parameter {name:?}: {e}"))
        })?;
        match name {
            "prefix" => prefix = value,
            "cursor" => cursor = Some(value).filter(|c| !c.is_empty()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "bad_query",
                            format!(
                                "limit must be a whole number from 1 to {MAX_LIMIT}, not {value:?}"
                            ),
                        )
                    })?
            }
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("unknown query parameter {other:?}; expected prefix, limit or cursor"),
                ))
            }
        }
    }
    // One more than asked tells whether another page follows.
    let mut keys = state
        .node
        .list(&prefix, cursor.as_deref(), limit + 1)
        .await?;
    let next = if keys.len() > limit {
        keys.truncate(limit);
        keys.last().cloned()
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"keys": keys, "cursor": next}),
    ))
}
