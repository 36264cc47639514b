//! Node-to-node routes: `GET /internal/v1/feed`, the change feed a peer
//! pulls (see `replication::feed` for its protocol).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::error::ApiError;
use super::{parse_query, AppState};
use crate::node::NodeError;
use crate::replication::codec;
use crate::replication::feed::{self, FeedQuery, MAX_WAIT};

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
    let answer = feed::read(&state.repl, &q).await.map_err(NodeError::from)?;
    let mut res = Response::new(Body::from(codec::encode(&answer.entries)));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(codec::CONTENT_TYPE));
    for (name, value) in [
        (feed::FEED_ID, answer.feed_id),
        (feed::UPTO, answer.upto),
        (feed::LAST_SEQ, answer.last_seq),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    Ok(res)
}
