//! The HTTP layer: the router over the node core, the request helpers the
//! route modules share, and the server loop (accept, serve with keep-alive,
//! drain on shutdown).
//!
//! Routes: `/health`, the v1 API (`v1`), and the seed's routes
//! (`seed_routes`). Every error that leaves this layer is JSON, including
//! the ones the router makes itself (unknown path, wrong method) and
//! oversize headers, which `front` answers before the router.

pub mod auth;
pub mod error;
pub mod forward;
pub mod front;
pub mod internal;
pub mod keypath;
pub mod negotiate;
pub mod seed_routes;
pub mod status;
pub mod v1;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::node::{EtagList, Node, Preconditions};
use crate::replication::{repair, Replication};
use error::ApiError;

/// What every handler can reach: one `Arc`, so that handing it to each
/// request (axum clones the state per request) costs one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The node's parts the handlers share.
pub struct Shared {
    pub node: Arc<Node>,
    /// Members, peers and replication state.
    pub repl: Arc<Replication>,
    /// Who may do what.
    pub auth: Arc<auth::Auth>,
    /// The URL clients reach this node at, for `Location` when a request
    /// carries no `Host`.
    pub public_url: Arc<str>,
    pub limits: ServerLimits,
    /// Permits for requests in flight (`limits.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// What the server lets one client hold.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Request line plus headers, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Open connections; past it, new ones get 503 (`/health` still
    /// answers) and are closed.
    pub max_connections: usize,
    /// Requests being served at once, `/health`, node-to-node routes and
    /// blocking reads aside; past it, 503.
    pub max_in_flight: usize,
    /// How long a client may take to send a request body (408 beyond).
    pub request_timeout: Duration,
}

impl ServerLimits {
    /// Room for anything: for tools that embed the server loop.
    pub fn generous() -> ServerLimits {
        ServerLimits {
            max_header_bytes: 64 << 10,
            max_connections: 100_000,
            max_in_flight: 100_000,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// 503 for a node that is at its limits.
fn overloaded(what: &str) -> Response {
    let mut res = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("this node is at its limit of {what}; retry shortly"),
    )
    .into_response();
    res.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    res
}

/// The router for connections past `max_connections`: `/health` answers,
/// everything else is 503, and the connection closes.
pub fn shed_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .fallback(|| async { overloaded("open connections") })
        .with_state(state)
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for in-flight requests before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the router for one node. Requests reach it through
/// `front::Front`, which checks limits and access first.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/status", get(status::status))
        .route("/v1/sync", axum::routing::post(status::sync))
        .route("/v1/digest", get(status::digest))
        .route("/v1/repair", axum::routing::post(status::repair))
        .route(crate::replication::feed::PATH, get(internal::feed))
        .route(repair::VERSIONS_PATH, get(internal::versions))
        .route(repair::RECORDS_PATH, axum::routing::post(internal::records))
        .route("/v1/kv", get(v1::list))
        .route("/v1/kv/", any(v1::empty_key))
        .route(
            "/v1/kv/{*key}",
            get(v1::get).put(v1::put).delete(v1::delete),
        )
        .merge(seed_routes::routes("bucket"))
        .merge(seed_routes::routes("canonicalbucket"))
        .fallback(unknown_route)
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "node_id": state.node.id()}),
    )
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {}", req.uri().path()))
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let mut res = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

/// The key named by the rest of the path after `prefix`, percent-decoded.
pub fn key_from_path(path: &str, prefix: &str) -> Result<String, ApiError> {
    let raw = path.strip_prefix(prefix).unwrap_or("");
    keypath::decode_path(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_key",
            format!("the key in the path is invalid: {e}"),
        )
    })
}

/// Parses a `timeout_ms` query value: 1 ms up to `max`.
pub fn parse_timeout_ms(value: &str, max: Duration) -> Result<Duration, ApiError> {
    parse_ms("timeout_ms", value, max)
}

/// Parses the query value of `name`, a number of milliseconds from 1 up
/// to `max`.
pub fn parse_ms(name: &str, value: &str, max: Duration) -> Result<Duration, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|t| !t.is_zero() && *t <= max)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_query",
                format!(
                    "{name} must be from 1 to {}, not {value:?}",
                    max.as_millis()
                ),
            )
        })
}

/// Splits and decodes a query string into (name, value) pairs.
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                keypath::decode_query(text).map_err(|e| {
                    ApiError::bad_request("bad_query", format!("query parameter {name:?}: {e}"))
                })
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// How much of an oversize body is read and thrown away before the 413, so
/// the client, still sending, reads the answer instead of a reset
/// connection. Past this the connection is closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a request body of at most `max_value_bytes`, within the request
/// timeout: 413 beyond the size, 408 beyond the time.
pub async fn read_body(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
) -> Result<Bytes, ApiError> {
    read_body_up_to(state, body, headers, state.node.limits().max_value_bytes).await
}

/// Reads a request body of at most `limit` bytes, within the request
/// timeout: 413 beyond the size, 408 beyond the time.
pub async fn read_body_up_to(
    state: &AppState,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let timeout = state.limits.request_timeout;
    match tokio::time::timeout(timeout, read_body_within(body, headers, limit)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
    }
}

async fn read_body_within(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen <= limit && declared.is_none_or(|d| d <= limit as u64) {
                buf.extend_from_slice(data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit || declared.is_some_and(|d| d > limit as u64) {
        let len = declared.unwrap_or(seen as u64).max(seen as u64);
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value is {len} bytes long; the limit is {limit} bytes"),
        ));
    }
    Ok(buf.freeze())
}

/// Parses `If-Match` and `If-None-Match`.
pub fn preconditions(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    let parse = |name: hyper::header::HeaderName| -> Result<Option<EtagList>, ApiError> {
        let values: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.to_str())
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::bad_request("bad_header", format!("{name} is not ASCII")))?;
        if values.is_empty() {
            return Ok(None);
        }
        EtagList::parse(&values.join(",")).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "bad_header",
                format!("{name} must be * or a list of quoted entity tags"),
            )
        })
    };
    Ok(Preconditions {
        if_match: parse(IF_MATCH)?,
        if_none_match: parse(IF_NONE_MATCH)?,
    })
}

/// What `serve` can hand a connection to: a cloneable tower service from
/// hyper's requests to axum's responses that never fails.
pub trait Connectable:
    tower_service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Connectable for S where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// How long a client may take to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests to finish. Connections past
/// `limits.max_connections` are served by `shed` (one request, then closed);
/// past four times that (at least 256 more), they are closed at once. With
/// `tls`, every connection must begin with a TLS handshake. Both services
/// are tower services, as a `Router` or `front::Front`.
pub async fn serve<S, T>(
    listener: TcpListener,
    service: S,
    shed: T,
    limits: ServerLimits,
    tls: Option<crate::tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) where
    S: Connectable,
    T: Connectable,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(service);
    let shed_service = hyper_util::service::TowerToHyperService::new(shed);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Shed connections take one request and close: many may wait at once.
    let shedding = Arc::new(tokio::sync::Semaphore::new(
        (limits.max_connections * 4).max(256),
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        // Leave room past the limit so `guard` can answer oversize headers
        // with JSON; hyper itself refuses what goes beyond this.
        .max_buf_size((limits.max_header_bytes * 2).max(64 << 10))
        .max_headers(front::MAX_HEADERS * 2);
    let mut shed_builder = builder.clone();
    shed_builder
        .keep_alive(false)
        .header_read_timeout(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn { stream, peer, tls: tls.clone(), watcher: graceful.watcher() };
                if let Ok(p) = open.clone().try_acquire_owned() {
                    tokio::spawn(conn.serve(builder.clone(), service.clone(), p));
                } else if let Ok(p) = shedding.clone().try_acquire_owned() {
                    tokio::spawn(conn.serve(shed_builder.clone(), shed_service.clone(), p));
                } else {
                    tracing::debug!(%peer, "connection refused: too many open");
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in {DRAIN_TIMEOUT:?}; closing anyway");
    }
}

/// An accepted connection, before its service is chosen.
struct Conn {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<crate::tls::TlsAcceptor>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// Serves the connection's requests with `service` (after the TLS
    /// handshake, with TLS), holding its `permit` until it closes.
    async fn serve<S: Connectable>(
        self,
        builder: hyper::server::conn::http1::Builder,
        service: hyper_util::service::TowerToHyperService<S>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Conn {
            stream,
            peer,
            tls,
            watcher,
        } = self;
        let result =
            match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
            };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(permit);
    }
}

/// The address a listener is bound to, as a base URL.
pub fn base_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}
