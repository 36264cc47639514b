//! The v1 API: `/v1/kv/{key}` (GET, HEAD, PUT, DELETE) and `/v1/kv`
//! (listing by prefix, paged). Documented in docs/API.md and
//! docs/openapi.yaml.
//!
//! Writes go to the key's master (`forward`); with `?replicas=N|all` the
//! master answers once that many peers applied the write. Reads are local,
//! or at the master with `?consistency=master`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, ETAG};
use hyper::StatusCode;

use super::error::ApiError;
use super::{
    forward, json_response, key_from_path, parse_query, parse_timeout_ms, preconditions, read_body,
    AppState,
};
use crate::node::version::Version;
use crate::node::{NodeError, Reached, WriteOutcome, DEFAULT_CONTENT_TYPE};
use crate::storage::Record;

/// Where the key routes begin: `/v1/kv/{key}`.
pub const PREFIX: &str = "/v1/kv/";

/// Default and largest page of a listing.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// Longest content type a client may store.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Longest a write may wait for its replicas.
const MAX_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);

/// The header telling how many peers applied a write with `replicas=`.
pub const REPLICAS_HEADER: &str = "x-ripple-replicas";

fn etag(version: &Version) -> HeaderValue {
    // By hand: `format!` costs a GET about 4% of its instructions.
    let mut text = Vec::with_capacity(20 + version.node.len());
    text.push(b'"');
    let digits = if version.ts == 0 {
        1
    } else {
        (64 - version.ts.leading_zeros() as usize).div_ceil(4)
    };
    for i in (0..digits).rev() {
        text.push(b"0123456789abcdef"[(version.ts >> (4 * i)) as usize & 0xf]);
    }
    text.push(b'-');
    text.extend_from_slice(version.node.as_bytes());
    text.push(b'"');
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

/// A write's options: `replicas=N|all` and `timeout_ms=`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteOptions {
    /// Peers that must apply the write before the answer (0: none).
    pub replicas: usize,
    pub timeout: Option<Duration>,
}

impl WriteOptions {
    /// How long the master may spend waiting for replicas: what a node
    /// forwarding the write must allow on top of a plain request.
    pub fn master_wait(&self, state: &AppState) -> Option<Duration> {
        (self.replicas > 0).then(|| {
            self.timeout
                .unwrap_or(Duration::from_millis(state.repl.config.replica_timeout_ms))
        })
    }

    /// Parses a write's query string.
    pub fn parse(state: &AppState, query: Option<&str>) -> Result<WriteOptions, ApiError> {
        let mut opts = WriteOptions::default();
        let peers = state.repl.members.peer_count();
        for (name, value) in parse_query(query)? {
            match name.as_str() {
                "replicas" => {
                    opts.replicas = match value.as_str() {
                        "all" => peers,
                        n => n.parse::<usize>().ok().filter(|n| *n <= peers).ok_or_else(|| {
                            ApiError::bad_request(
                                "bad_query",
                                format!("replicas must be \"all\" or a number from 0 to {peers} (this cluster's peers), not {value:?}"),
                            )
                        })?,
                    }
                }
                "timeout_ms" => opts.timeout = Some(parse_timeout_ms(&value, MAX_REPLICA_TIMEOUT)?),
                other => {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        format!("unknown query parameter {other:?}; expected replicas or timeout_ms"),
                    ))
                }
            }
        }
        Ok(opts)
    }
}

/// After a write at the master: waits for the replicas asked for. `Ok`
/// with the count, or the 504 answer on timeout.
pub async fn await_replicas(
    state: &AppState,
    outcome: &WriteOutcome,
    opts: WriteOptions,
) -> Result<Option<usize>, ApiError> {
    if opts.replicas == 0 {
        return Ok(None);
    }
    let timeout = opts
        .timeout
        .unwrap_or(Duration::from_millis(state.repl.config.replica_timeout_ms));
    match state.repl.wait_replicas(outcome.seq, opts.replicas, timeout).await {
        Ok(n) => Ok(Some(n)),
        Err(n) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "replication_timeout",
            format!(
                "the write (version {}) is durable on the master {} but only {n} of {} replicas applied it within {} ms; it will reach the rest lazily",
                outcome.version,
                state.node.id(),
                opts.replicas,
                timeout.as_millis()
            ),
        )
        .with_detail("replicas", n.into())
        .with_detail("wanted", opts.replicas.into())
        .with_detail("version", outcome.version.to_string().into())),
    }
}

/// Where a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    /// This node's storage, never waiting on a peer.
    Any,
    /// The key's master.
    Master,
}

/// The longest a blocking read waits, and how long when it does not say.
const MAX_READ_WAIT: Duration = Duration::from_secs(600);
const DEFAULT_READ_WAIT: Duration = Duration::from_secs(10);

/// A read's options: `consistency=any|master`, and for a blocking read
/// `min_version=` (an ETag) with `wait_ms=`.
#[derive(Debug)]
struct ReadOptions {
    consistency: Consistency,
    /// Answer once the key's version is this one or later.
    min_version: Option<Version>,
    /// How long to wait for `min_version` (ignored without it).
    wait: Option<Duration>,
}

impl ReadOptions {
    fn parse(query: Option<&str>) -> Result<ReadOptions, ApiError> {
        let mut opts = ReadOptions {
            consistency: Consistency::Any,
            min_version: None,
            wait: None,
        };
        for (name, value) in parse_query(query)? {
            match (name.as_str(), value.as_str()) {
                ("consistency", "any") => opts.consistency = Consistency::Any,
                ("consistency", "master") => opts.consistency = Consistency::Master,
                ("consistency", v) => {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        format!("consistency must be \"any\" or \"master\", not {v:?}"),
                    ))
                }
                ("min_version", v) => {
                    opts.min_version = Some(Version::parse_tag(v).ok_or_else(|| {
                        ApiError::bad_request(
                            "bad_query",
                            format!("min_version must be a version as the ETag gives it (\"<hex clock>-<node id>\", quotes optional), not {v:?}"),
                        )
                    })?)
                }
                ("wait_ms", v) => opts.wait = Some(super::parse_ms("wait_ms", v, MAX_READ_WAIT)?),
                (other, _) => {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        format!("unknown query parameter {other:?}; expected consistency, min_version or wait_ms"),
                    ))
                }
            }
        }
        // Without min_version there is nothing to wait for: wait_ms is
        // ignored, as Consul ignores `wait` without `index`.
        Ok(opts)
    }
}

/// A blocking read: waits until the key reaches `min` on this node. The
/// record (`None`: deleted), or the 504 answer.
async fn read_reaching(
    state: &AppState,
    key: &str,
    min: &Version,
    wait: Duration,
) -> Result<Option<Record>, ApiError> {
    let reached = tokio::select! {
        r = state.node.get_reaching(key, min, wait) => r?,
        _ = state.repl.stopped() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "this node is shutting down; read from another",
            ))
        }
    };
    match reached {
        Reached::Yes(record) => Ok(record),
        Reached::No(current) => {
            let e = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "version_not_reached",
                format!(
                    "the key {key:?} did not reach version {min} on node {} within {} ms; {}",
                    state.node.id(),
                    wait.as_millis(),
                    match &current {
                        Some(v) => format!("it is at version {v}"),
                        None => "it holds no value".to_owned(),
                    }
                ),
            );
            Err(match current {
                Some(v) => e.with_detail("version", v.to_string().into()),
                None => e,
            })
        }
    }
}

/// `GET /v1/kv/{key}` (and `HEAD`, which axum answers from this handler
/// without the body).
pub async fn get(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let key = key_from_path(parts.uri.path(), PREFIX)?;
    state.node.check_key(&key)?;
    let opts = ReadOptions::parse(parts.uri.query())?;
    // A blocking read's wait is on top of the forwarding timeout.
    let wait = opts
        .min_version
        .as_ref()
        .map(|_| opts.wait.unwrap_or(DEFAULT_READ_WAIT));
    if opts.consistency == Consistency::Master {
        if let Some(res) = forward::to_master(&state, &key, &parts, bytes::Bytes::new(), wait).await
        {
            return Ok(res);
        }
    }
    let pre = preconditions(&parts.headers)?;
    let record = match (&opts.min_version, wait) {
        (Some(min), Some(wait)) => read_reaching(&state, &key, min, wait).await?,
        _ => state.node.get(&key).await?,
    };
    let record = record
        .ok_or_else(|| ApiError::not_found(format!("no value is stored under the key {key:?}")))?;
    if let Some(list) = &pre.if_match {
        if !list.matches_strong(Some(&record.version)) {
            return Err(NodeError::PreconditionFailed(
                "If-Match does not match the current version",
            )
            .into());
        }
    }
    if let Some(list) = &pre.if_none_match {
        if list.matches_weak(Some(&record.version)) {
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
    let opts = WriteOptions::parse(&state, parts.uri.query())?;
    let pre = preconditions(&parts.headers)?;
    let content_type = match parts.headers.get(CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|t| t.len() <= MAX_CONTENT_TYPE_BYTES && !t.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_header",
                    format!("Content-Type must be 1 to {MAX_CONTENT_TYPE_BYTES} visible ASCII characters"),
                )
            })?
            .to_owned(),
    };
    let value = read_body(&state, body, &parts.headers).await?;
    if let Some(res) = forward::to_master(
        &state,
        &key,
        &parts,
        value.clone(),
        opts.master_wait(&state),
    )
    .await
    {
        return Ok(res);
    }
    let _awaiting = state.repl.awaiting_acks(opts.replicas);
    let outcome = state.node.put(&key, value, content_type, &pre).await?;
    let replicas = await_replicas(&state, &outcome, opts).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut res = json_response(
        status,
        &Written {
            key: &key,
            version: outcome.version.to_string(),
        },
    );
    res.headers_mut().insert(ETAG, etag(&outcome.version));
    if let Some(n) = replicas {
        res.headers_mut().insert(
            HeaderName::from_static(REPLICAS_HEADER),
            HeaderValue::from(n),
        );
    }
    Ok(res)
}

/// A write's answer: `{"key": ..., "version": ...}`.
#[derive(serde::Serialize)]
struct Written<'a> {
    key: &'a str,
    version: String,
}

/// `DELETE /v1/kv/{key}`: 204; 404 when there is nothing to delete.
pub async fn delete(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let key = key_from_path(parts.uri.path(), PREFIX)?;
    state.node.check_key(&key)?;
    let opts = WriteOptions::parse(&state, parts.uri.query())?;
    let pre = preconditions(&parts.headers)?;
    if let Some(res) = forward::to_master(
        &state,
        &key,
        &parts,
        bytes::Bytes::new(),
        opts.master_wait(&state),
    )
    .await
    {
        return Ok(res);
    }
    let _awaiting = state.repl.awaiting_acks(opts.replicas);
    let outcome = state.node.delete(&key, &pre).await.map_err(|e| match e {
        NodeError::NotFound => {
            ApiError::not_found(format!("no value is stored under the key {key:?}"))
        }
        e => e.into(),
    })?;
    let replicas = await_replicas(&state, &outcome, opts).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(ETAG, etag(&outcome.version));
    if let Some(n) = replicas {
        res.headers_mut().insert(
            HeaderName::from_static(REPLICAS_HEADER),
            HeaderValue::from(n),
        );
    }
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
    for (name, value) in parse_query(req.uri().query())? {
        match name.as_str() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written entity tag is the version's text, quoted.
        #[test]
        fn etag_is_the_quoted_version(ts in any::<u64>(), node in "[a-z0-9-]{1,20}") {
            let version = Version { ts, node };
            let tag = etag(&version);
            prop_assert_eq!(tag.to_str().unwrap(), format!("\"{version}\""));
        }
    }

    #[test]
    fn etag_of_the_smallest_timestamps() {
        for ts in [0, 1, 15, 16, u64::MAX] {
            let version = Version {
                ts,
                node: "n1".into(),
            };
            let tag = etag(&version);
            assert_eq!(tag.to_str().unwrap(), format!("\"{version}\""));
        }
    }
}
