//! The seed's routes, so its users can move over unchanged:
//! `/bucket/{key}` (lazy) and `/canonicalbucket/{key}` (canonical).
//!
//! - POST (or PUT) stores the body: 201, `Location: <base>/bucket/{key}`,
//!   and that location as the message.
//! - GET returns the value as the message; 404 when absent. GET on the bare
//!   route lists every key as a `/bucket/{key}` URL.
//! - DELETE: 202 with the message "accepted"; 404 when absent.
//! - A key over `max_key_bytes`: 400 on POST and DELETE, 404 on GET, as the
//!   seed's tests expect.
//!
//! Every answer, errors included, is negotiated on `Accept` (see
//! `negotiate`): HTML by default, XML, JSON `{"message": ...}` or text.
//!
//! In a cluster the families keep the seed's meaning. Lazy (`/bucket`):
//! writes go to the key's master and propagate in the background; reads
//! are local. Canonical (`/canonicalbucket`): writes answer once every
//! replica applied them (`replicas=all`); a read is served by the master;
//! the listing is the union of every reachable node's keys.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST, LOCATION};
use hyper::StatusCode;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::Method;

use super::error::ApiError;
use super::negotiate::{self, escape_markup, Format};
use super::v1::{await_replicas, WriteOptions};
use super::{forward, key_from_path, keypath, read_body, AppState};
use crate::client::{list_path, parse_list_page};
use crate::node::{NodeError, Preconditions, DEFAULT_CONTENT_TYPE};

/// Page size used to gather a whole listing.
const LIST_PAGE: usize = 10_000;

/// The routes of one family (`bucket` or `canonicalbucket`).
pub fn routes(family: &'static str) -> Router<AppState> {
    Router::new()
        .route(&format!("/{family}"), get(list))
        .route(&format!("/{family}/"), get(list))
        .route(
            &format!("/{family}/{{*key}}"),
            get(get_value).post(store).put(store).delete(delete),
        )
}

/// What an answer says: one text, or a list of them.
enum Message {
    Text(String),
    List(Vec<String>),
}

/// A negotiated answer.
fn render(format: Format, status: StatusCode, message: &Message, code: Option<&str>) -> Response {
    let body = match (format, message) {
        (Format::Html, Message::Text(t)) => {
            format!("<html><body>{}</body></html>", escape_markup(t))
        }
        (Format::Html, Message::List(items)) => {
            let lis: String = items
                .iter()
                .map(|i| {
                    let i = escape_markup(i);
                    format!("<li><a href=\"{i}\">{i}</a></li>")
                })
                .collect();
            format!("<html><body><ul>{lis}</ul></body></html>")
        }
        (Format::Xml, Message::Text(t)) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><message>{}</message>",
            escape_markup(t)
        ),
        (Format::Xml, Message::List(items)) => {
            let keys: String = items
                .iter()
                .map(|i| format!("<key>{}</key>", escape_markup(i)))
                .collect();
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><message>{keys}</message>")
        }
        (Format::Json, m) => {
            let message = match m {
                Message::Text(t) => serde_json::json!(t),
                Message::List(items) => serde_json::json!(items),
            };
            let value = match code {
                Some(code) => serde_json::json!({"error": code, "message": message}),
                None => serde_json::json!({"message": message}),
            };
            value.to_string()
        }
        (Format::Text, Message::Text(t)) => t.clone(),
        (Format::Text, Message::List(items)) => items.iter().map(|i| format!("{i}\n")).collect(),
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    res
}

fn render_error(format: Format, e: ApiError) -> Response {
    render(format, e.status, &Message::Text(e.message), Some(e.code))
}

/// The format the client asked for, or a 406 (as JSON, the one format
/// every HTTP client can read) when it accepts none of ours.
fn format_of(parts: &Parts) -> Result<Format, ApiError> {
    let accept = parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    negotiate::choose(accept).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "this route answers in text/html, application/xml, application/json or text/plain",
        )
    })
}

/// Which family a path belongs to, and its key.
fn seed_key(path: &str) -> Result<(bool, String), ApiError> {
    match path.strip_prefix("/canonicalbucket/") {
        Some(_) => Ok((true, key_from_path(path, "/canonicalbucket/")?)),
        None => Ok((false, key_from_path(path, "/bucket/")?)),
    }
}

/// `<base>/bucket/{key}`: the base is the Host the client used (passed on
/// by a forwarding node), or this node's URL.
fn location(state: &AppState, parts: &Parts, key: &str) -> String {
    let host = if forward::was_forwarded(parts) {
        parts.headers.get(forward::FORWARDED_HOST)
    } else {
        parts.headers.get(HOST)
    };
    let base = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.contains('@') && h.parse::<hyper::http::uri::Authority>().is_ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| state.public_url.to_string());
    format!("{base}/bucket/{}", keypath::encode_path(key))
}

/// Splits a request, answering 406 when no format fits.
fn negotiate_parts(req: Request) -> Result<(Format, Parts, Body), ApiError> {
    let (parts, body) = req.into_parts();
    let format = format_of(&parts)?;
    Ok((format, parts, body))
}

/// Canonical writes wait for every replica.
fn write_options(state: &AppState, canonical: bool) -> WriteOptions {
    WriteOptions {
        replicas: if canonical {
            state.repl.members.peer_count()
        } else {
            0
        },
        timeout: None,
    }
}

async fn get_value(State(state): State<AppState>, req: Request) -> Response {
    let (format, parts, _) = match negotiate_parts(req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let (canonical, key) = seed_key(parts.uri.path())?;
        let not_found = || ApiError::not_found(format!("no value is stored under the key {key:?}"));
        if canonical && state.node.check_key(&key).is_ok() {
            if let Some(res) = forward::to_master(&state, &key, &parts, Bytes::new(), None).await {
                return Ok(Err(res));
            }
        }
        match state.node.get(&key).await {
            Ok(Some(record)) => Ok(Ok(String::from_utf8_lossy(&record.value).into_owned())),
            Ok(None) | Err(NodeError::KeyTooLong { .. }) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    match result {
        Ok(Ok(value)) => render(format, StatusCode::OK, &Message::Text(value), None),
        Ok(Err(relayed)) => relayed,
        Err(e) => render_error(format, e),
    }
}

async fn store(State(state): State<AppState>, req: Request) -> Response {
    let (format, parts, body) = match negotiate_parts(req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let (canonical, key) = seed_key(parts.uri.path())?;
        state.node.check_key(&key)?;
        let value = read_body(&state, body, &parts.headers).await?;
        let wait = write_options(&state, canonical).master_wait(&state);
        if let Some(res) = forward::to_master(&state, &key, &parts, value.clone(), wait).await {
            return Ok(Err(res));
        }
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_owned();
        let opts = write_options(&state, canonical);
        let _awaiting = state.repl.awaiting_acks(opts.replicas);
        let outcome = state
            .node
            .put(&key, value, content_type, &Preconditions::default())
            .await?;
        await_replicas(&state, &outcome, opts).await?;
        Ok::<_, ApiError>(Ok(location(&state, &parts, &key)))
    }
    .await;
    match result {
        Ok(Ok(loc)) => {
            let mut res = render(
                format,
                StatusCode::CREATED,
                &Message::Text(loc.clone()),
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&loc) {
                res.headers_mut().insert(LOCATION, v);
            }
            res
        }
        Ok(Err(relayed)) => relayed,
        Err(e) => render_error(format, e),
    }
}

async fn delete(State(state): State<AppState>, req: Request) -> Response {
    let (format, parts, _) = match negotiate_parts(req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let (canonical, key) = seed_key(parts.uri.path())?;
        state.node.check_key(&key)?;
        let wait = write_options(&state, canonical).master_wait(&state);
        if let Some(res) = forward::to_master(&state, &key, &parts, Bytes::new(), wait).await {
            return Ok(Some(res));
        }
        let opts = write_options(&state, canonical);
        let _awaiting = state.repl.awaiting_acks(opts.replicas);
        let outcome = state
            .node
            .delete(&key, &Preconditions::default())
            .await
            .map_err(|e| match e {
                NodeError::NotFound => {
                    ApiError::not_found(format!("no value is stored under the key {key:?}"))
                }
                e => e.into(),
            })?;
        await_replicas(&state, &outcome, opts).await?;
        Ok::<_, ApiError>(None)
    }
    .await;
    match result {
        Ok(None) => render(
            format,
            StatusCode::ACCEPTED,
            &Message::Text("accepted".into()),
            None,
        ),
        Ok(Some(relayed)) => relayed,
        Err(e) => render_error(format, e),
    }
}

/// How long the canonical listing waits on each peer.
const PEER_LIST_TIMEOUT: Duration = Duration::from_secs(10);

async fn list(State(state): State<AppState>, req: Request) -> Response {
    let (format, parts, _) = match negotiate_parts(req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut keys = BTreeSet::new();
    if let Err(e) = local_keys(&state, &mut keys).await {
        return render_error(format, e);
    }
    if parts.uri.path().starts_with("/canonicalbucket") {
        // The union of every reachable node's keys; an unreachable peer
        // leaves out only what it alone holds.
        let peers: Vec<String> = state.repl.members.peers().map(|m| m.id.clone()).collect();
        let tasks: Vec<_> = peers
            .into_iter()
            .map(|id| {
                let state = state.clone();
                tokio::spawn(async move { peer_keys(&state, &id).await })
            })
            .collect();
        for t in tasks {
            if let Ok(Ok(peer_keys)) = t.await {
                keys.extend(peer_keys);
            }
        }
    }
    let urls = keys
        .iter()
        .map(|k| format!("/bucket/{}", keypath::encode_path(k)))
        .collect();
    render(format, StatusCode::OK, &Message::List(urls), None)
}

async fn local_keys(state: &AppState, keys: &mut BTreeSet<String>) -> Result<(), ApiError> {
    let mut after: Option<String> = None;
    loop {
        let page = state.node.list("", after.as_deref(), LIST_PAGE).await?;
        let full = page.len() == LIST_PAGE;
        after = page.last().cloned();
        keys.extend(page);
        if !full {
            return Ok(());
        }
    }
}

/// Every key of peer `id`, page by page.
async fn peer_keys(state: &AppState, id: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = list_path("", cursor.as_deref(), Some(LIST_PAGE));
        let reply = state
            .repl
            .peers
            .send(id, Method::GET, &path, &[], Bytes::new(), PEER_LIST_TIMEOUT)
            .await?;
        let (page, next) = parse_list_page(&reply)?;
        keys.extend(page);
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(keys),
        }
    }
}
