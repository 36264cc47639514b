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
//! On one node the two route families behave alike.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST, LOCATION};
use hyper::StatusCode;

use super::error::ApiError;
use super::negotiate::{self, escape_markup, Format};
use super::{key_from_path, keypath, read_body, AppState};
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
fn format_of(req: &Request) -> Result<Format, ApiError> {
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    negotiate::choose(accept).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "this route answers in text/html, application/xml, application/json or text/plain",
        )
    })
}

/// The key after `/bucket/` or `/canonicalbucket/`.
fn seed_key(path: &str) -> Result<String, ApiError> {
    let prefix = if path.starts_with("/canonicalbucket/") {
        "/canonicalbucket/"
    } else {
        "/bucket/"
    };
    key_from_path(path, prefix)
}

/// `<base>/bucket/{key}`: the base is the request's Host, or the node's URL.
fn location(state: &AppState, req_host: Option<&HeaderValue>, key: &str) -> String {
    let base = req_host
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<hyper::http::uri::Authority>().is_ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| state.public_url.clone());
    format!("{base}/bucket/{}", keypath::encode_path(key))
}

async fn get_value(State(state): State<AppState>, req: Request) -> Response {
    let format = match format_of(&req) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let path = req.uri().path().to_owned();
    drop(req);
    let result = async {
        let key = seed_key(&path)?;
        let not_found = || ApiError::not_found(format!("no value is stored under the key {key:?}"));
        match state.node.get(&key).await {
            Ok(Some(record)) => Ok(String::from_utf8_lossy(&record.value).into_owned()),
            Ok(None) | Err(NodeError::KeyTooLong { .. }) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    match result {
        Ok(value) => render(format, StatusCode::OK, &Message::Text(value), None),
        Err(e) => render_error(format, e),
    }
}

async fn store(State(state): State<AppState>, req: Request) -> Response {
    let format = match format_of(&req) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    let result = async {
        let key = seed_key(parts.uri.path())?;
        state.node.check_key(&key)?;
        let value = read_body(body, &parts.headers, state.node.limits().max_value_bytes).await?;
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_owned();
        state
            .node
            .put(&key, value, content_type, &Preconditions::default())
            .await?;
        Ok::<_, ApiError>(location(&state, parts.headers.get(HOST), &key))
    }
    .await;
    match result {
        Ok(loc) => {
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
        Err(e) => render_error(format, e),
    }
}

async fn delete(State(state): State<AppState>, req: Request) -> Response {
    let format = match format_of(&req) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let path = req.uri().path().to_owned();
    drop(req);
    let result = async {
        let key = seed_key(&path)?;
        state
            .node
            .delete(&key, &Preconditions::default())
            .await
            .map_err(|e| match e {
                NodeError::NotFound => {
                    ApiError::not_found(format!("no value is stored under the key {key:?}"))
                }
                e => e.into(),
            })
    }
    .await;
    match result {
        Ok(_) => render(
            format,
            StatusCode::ACCEPTED,
            &Message::Text("accepted".into()),
            None,
        ),
        Err(e) => render_error(format, e),
    }
}

async fn list(State(state): State<AppState>, req: Request) -> Response {
    let format = match format_of(&req) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let mut urls = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match state.node.list("", after.as_deref(), LIST_PAGE).await {
            Ok(page) => page,
            Err(e) => return render_error(format, e.into()),
        };
        let full = page.len() == LIST_PAGE;
        after = page.last().cloned();
        urls.extend(
            page.iter()
                .map(|k| format!("/bucket/{}", keypath::encode_path(k))),
        );
        if !full {
            break;
        }
    }
    render(format, StatusCode::OK, &Message::List(urls), None)
}
