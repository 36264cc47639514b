//! The clients of a chaos run: tokio tasks that each send one request at a
//! time to a random node, directly (not through a proxy), on a small key
//! space, and record every request in their history. Writes carry values
//! no other request writes (`c{client}-{counter}`), so a value read or
//! found at the end names the one request that wrote it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use hyper::{Method, StatusCode};

use super::history::{now_us, parse_etag, Cond, Kind, Op, Outcome};
use super::nodes::Endpoints;
use crate::cli::rng::Rng;
use crate::client::{self, Reply, SendError};

/// A request without an answer after this long counts as unknown, with no
/// bound on when it may still be applied. Longer than any pause, so a
/// stopped node's requests are answered after SIGCONT instead.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Shared {
    pub endpoints: Endpoints,
    pub keys: Vec<String>,
    pub stop: AtomicBool,
}

/// Runs client `id` until `shared.stop`; returns its history.
///
/// Four requests in five go to the shared key space (`shared.keys`), where
/// clients conflict. One in ten creates a key of its own that is written
/// once and never changed (`once-c{id}-{n}`), and one in ten works on keys
/// of its own that are created and then deleted once (`gone-c{id}-{n}`):
/// a loss or a resurrection there stays visible until the end, while on a
/// shared key a later write would hide it.
pub async fn run(id: usize, mut rng: Rng, shared: Arc<Shared>) -> Vec<Op> {
    let mut ops = Vec::new();
    // The ETag this client last read per key, for If-Match.
    let mut etags: HashMap<String, String> = HashMap::new();
    // This client's `gone-` keys that exist, oldest first.
    let mut gone: VecDeque<String> = VecDeque::new();
    let mut counter = 0u64;
    let n = shared
        .endpoints
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    while !shared.stop.load(Ordering::SeqCst) {
        let node = rng.index(n);
        counter += 1;
        let value = format!("c{id}-{counter}");
        let family = rng.below(100);
        let (key, kind) = if family < 80 {
            let key = shared.keys[rng.index(shared.keys.len())].clone();
            let kind = match rng.below(100) {
                0..=34 => Kind::Put {
                    value,
                    cond: Cond::None,
                },
                35..=64 => Kind::Get {
                    master: rng.chance(0.1),
                },
                65..=76 => Kind::Delete,
                77..=89 => match etags.get(&key) {
                    Some(etag) => Kind::Put {
                        value,
                        cond: Cond::IfMatch(etag.clone()),
                    },
                    None => Kind::Get { master: false },
                },
                _ => Kind::Put {
                    value,
                    cond: Cond::IfNoneMatch,
                },
            };
            (key, kind)
        } else if family < 90 {
            let kind = Kind::Put {
                value,
                cond: Cond::IfNoneMatch,
            };
            (format!("once-c{id}-{counter}"), kind)
        } else if !gone.is_empty() && rng.chance(0.5) {
            (gone.pop_front().expect("not empty"), Kind::Delete)
        } else {
            let kind = Kind::Put {
                value,
                cond: Cond::IfNoneMatch,
            };
            (format!("gone-c{id}-{counter}"), kind)
        };
        let endpoint = shared.endpoints.read().unwrap_or_else(|p| p.into_inner())[node].clone();
        let start = now_us();
        let (outcome, etag) = perform(&endpoint, &key, &kind).await;
        let end = now_us();
        if let Some(etag) = etag {
            etags.insert(key.clone(), etag);
        }
        if key.starts_with("gone-") {
            let exists = match (&kind, &outcome) {
                (Kind::Put { .. }, Outcome::Written { .. } | Outcome::Unknown { .. }) => true,
                // Refused (not a 404): try the delete again later.
                (Kind::Delete, Outcome::Refused { .. }) => true,
                _ => false,
            };
            if exists {
                gone.push_back(key.clone());
            }
        }
        if !outcome.is_ok() {
            // Back off a little, as a real client would, rather than spin
            // on a node that is down.
            tokio::time::sleep(Duration::from_millis(rng.range(20, 60))).await;
        }
        ops.push(Op {
            client: id,
            node,
            key,
            kind,
            start,
            end,
            outcome,
        });
    }
    ops
}

/// Sends one request; its outcome, and the raw ETag of a GET 200.
async fn perform(endpoint: &client::Endpoint, key: &str, kind: &Kind) -> (Outcome, Option<String>) {
    let path = client::kv_path(key);
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let (method, path, body) = match kind {
        Kind::Get { master: false } => (Method::GET, path, Bytes::new()),
        Kind::Get { master: true } => (
            Method::GET,
            format!("{path}?consistency=master"),
            Bytes::new(),
        ),
        Kind::Put { value, cond } => {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("text/plain")));
            match cond {
                Cond::None => {}
                Cond::IfMatch(etag) => {
                    if let Ok(v) = HeaderValue::from_str(etag) {
                        headers.push((IF_MATCH, v));
                    }
                }
                Cond::IfNoneMatch => headers.push((IF_NONE_MATCH, HeaderValue::from_static("*"))),
            }
            (Method::PUT, path, Bytes::from(value.clone()))
        }
        Kind::Delete => (Method::DELETE, path, Bytes::new()),
    };
    let req = match client::request(method, &path, &headers, body) {
        Ok(req) => req,
        Err(e) => {
            return (
                Outcome::Unexpected {
                    status: 0,
                    why: format!("cannot build the request: {e}"),
                },
                None,
            )
        }
    };
    let sent = tokio::time::timeout(
        CLIENT_TIMEOUT,
        endpoint.send(req, CLIENT_TIMEOUT + Duration::from_secs(5)),
    )
    .await;
    let reply = match sent {
        Err(_) => {
            return (
                Outcome::Unknown {
                    status: 0,
                    why: format!("no answer within {CLIENT_TIMEOUT:?}"),
                    bounded: false,
                },
                None,
            )
        }
        Ok(Err(SendError::Unreachable(_, e))) => {
            return (Outcome::Refused { status: 0, why: e }, None)
        }
        Ok(Err(SendError::Failed(_, e))) => {
            return (
                Outcome::Unknown {
                    status: 0,
                    why: e,
                    bounded: true,
                },
                None,
            )
        }
        Ok(Ok(reply)) => reply,
    };
    classify(kind, &reply)
}

/// What an answer says about the request.
fn classify(kind: &Kind, reply: &Reply) -> (Outcome, Option<String>) {
    let status = reply.status.as_u16();
    let raw_etag = reply.header("etag").map(str::to_owned);
    let version = raw_etag.as_deref().and_then(parse_etag);
    let error = || {
        serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .map(|v| {
                (
                    v["error"].as_str().unwrap_or_default().to_owned(),
                    v["applied"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .unwrap_or_default()
    };
    let unexpected = || Outcome::Unexpected {
        status,
        why: reply.error_message().chars().take(200).collect(),
    };
    let unavailable = || {
        let (code, applied) = error();
        match (code.as_str(), applied.as_str()) {
            ("master_unavailable", "no") | ("storage_unavailable", _) | ("overloaded", _) => {
                Outcome::Refused { status, why: code }
            }
            ("master_unavailable", _) => Outcome::Unknown {
                status,
                why: format!("{code}, applied {applied}"),
                bounded: true,
            },
            _ => unexpected(),
        }
    };
    let outcome = match (kind, reply.status) {
        (Kind::Get { .. }, StatusCode::OK) => {
            return (
                Outcome::Read {
                    value: String::from_utf8_lossy(&reply.body).into_owned(),
                    version,
                },
                raw_etag,
            )
        }
        (Kind::Get { .. }, StatusCode::NOT_FOUND) => Outcome::NotFound,
        (Kind::Get { .. }, StatusCode::SERVICE_UNAVAILABLE) => unavailable(),
        (Kind::Put { .. }, StatusCode::OK | StatusCode::CREATED) => {
            Outcome::Written { status, version }
        }
        (Kind::Delete, StatusCode::NO_CONTENT) => Outcome::Written { status, version },
        (Kind::Delete, StatusCode::NOT_FOUND) => Outcome::NotFound,
        (Kind::Put { cond, .. }, StatusCode::PRECONDITION_FAILED) if *cond != Cond::None => {
            Outcome::Refused {
                status,
                why: "precondition_failed".to_owned(),
            }
        }
        (Kind::Put { .. } | Kind::Delete, StatusCode::SERVICE_UNAVAILABLE) => unavailable(),
        _ => unexpected(),
    };
    (outcome, None)
}
