//! Node-to-node routes: `GET /internal/v1/feed`, the change feed a peer
//! pulls (see `replication::feed` for its protocol), and the two routes of
//! an anti-entropy pass, `GET /internal/v1/versions` and
//! `POST /internal/v1/records` (see `replication::repair`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::error::ApiError;
use super::{parse_query, read_body_up_to, AppState};
use crate::node::NodeError;
use crate::replication::feed::{self, FeedQuery, MAX_WAIT};
use crate::replication::{codec, digest, repair};
use crate::storage::Entry;

pub async fn feed(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let mut q = FeedQuery {
        limit: state.repl.config.batch_max_records,
        ..Default::default()
    };
    let number = |name: &str, value: &str| {
        value.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                format!("{name} must be a whole number, not {value:?}"),
            )
        })
    };
    for (name, value) in parse_query(req.uri().query())? {
        match name.as_str() {
            "after" => q.after = number("after", &value)?,
            "limit" => q.limit = (number("limit", &value)? as usize).min(state.repl.config.batch_max_records),
            "wait_ms" => q.wait = Duration::from_millis(number("wait_ms", &value)?).min(MAX_WAIT),
            "feed" => q.feed = number("feed", &value)?,
            "from" => q.from = Some(value),
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("unknown query parameter {other:?}; expected after, limit, wait_ms, feed or from"),
                ))
            }
        }
    }
    q.skip_own = req
        .headers()
        .get(feed::SKIP_OWN)
        .is_some_and(|v| v.as_bytes() == b"1");
    if let Some(v) = req.headers().get(feed::ACKED) {
        let v = v.to_str().unwrap_or("");
        q.acked = Some(number(feed::ACKED, v)?);
    }
    let answer = feed::read(&state.repl, &q).await.map_err(NodeError::from)?;
    Ok(frame(
        codec::encode(&answer.entries),
        &[
            (feed::FEED_ID, answer.feed_id),
            (feed::UPTO, answer.upto),
            (feed::LAST_SEQ, answer.last_seq),
            (feed::ACK_WANTED, u64::from(answer.ack_wanted)),
        ],
    ))
}

/// `GET /internal/v1/versions?ranges=00,1f`: the key and version of every
/// record in those ranges, tombstones included, each live one with its
/// record hash in place of the value (see `replication::digest::versions`).
pub async fn versions(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let mut wanted = [false; digest::RANGES];
    let mut any = false;
    for (name, value) in parse_query(req.uri().query())? {
        if name != "ranges" {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("unknown query parameter {name:?}; expected ranges"),
            ));
        }
        for r in value.split(',') {
            let i = digest::parse_range(r).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_query",
                    format!("{r:?} is not a range: ranges are two hex digits, 00 to ff"),
                )
            })?;
            wanted[i] = true;
            any = true;
        }
    }
    if !any {
        return Err(ApiError::bad_request(
            "bad_query",
            "ranges is required: a comma-separated list of ranges, 00 to ff",
        ));
    }
    let listed = digest::versions(state.node.storage().as_ref(), &wanted, repair::MAX_VERSIONS)
        .await
        .map_err(NodeError::from)?
        .ok_or_else(|| {
            ApiError::bad_request(
                "too_many_records",
                format!(
                    "those ranges hold more than {} records; ask for fewer at a time",
                    repair::MAX_VERSIONS
                ),
            )
        })?;
    let entries: Vec<Entry> = listed
        .into_iter()
        .map(|record| Entry { seq: 0, record })
        .collect();
    Ok(frame(codec::encode(&entries), &[]))
}

/// Most bytes of keys a records request may carry.
pub const MAX_RECORDS_REQUEST_BYTES: usize = 16 << 20;

/// `POST /internal/v1/records` with `{"keys": [...]}`: the stored record of
/// each key (tombstones included, absent keys left out), as many as fit the
/// batch limits; `x-ripple-covered` says how many of the keys that covers.
pub async fn records(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body_up_to(&state, body, &parts.headers, MAX_RECORDS_REQUEST_BYTES).await?;
    let asked: repair::RecordsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_body",
            format!("the body must be {{\"keys\": [...]}}: {e}"),
        )
    })?;
    let max = state.repl.config.batch_max_records;
    if asked.keys.len() > max {
        return Err(ApiError::bad_request(
            "bad_body",
            format!("{} keys asked; at most {max} per request", asked.keys.len()),
        ));
    }
    for key in &asked.keys {
        state.node.check_key(key)?;
    }
    let (entries, covered) = repair::records(&state.repl, &asked.keys)
        .await
        .map_err(NodeError::from)?;
    Ok(frame(
        codec::encode(&entries),
        &[(repair::COVERED, covered as u64)],
    ))
}

/// A feed-frame answer with numeric headers.
fn frame(body: bytes::Bytes, headers: &[(&'static str, u64)]) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(codec::CONTENT_TYPE));
    for (name, value) in headers {
        h.insert(HeaderName::from_static(name), HeaderValue::from(*value));
    }
    res
}
