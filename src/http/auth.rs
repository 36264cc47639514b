//! Access control, off until configured. Clients present a bearer token
//! (`Authorization: Bearer <token>`) whose access is `read` (GET, HEAD,
//! listing, status), `write` (also PUT, POST, DELETE) or `admin` (also
//! `/v1/sync`). Nodes present the cluster secret (`x-ripple-secret`) to each
//! other: it opens every route, and `/internal/` routes need it. `/health`
//! stays open. A request without a valid credential gets 401, one whose
//! token lacks the access 403. Secrets are compared in constant time and
//! never appear in logs, errors or status.

use std::fmt;

use axum::extract::Request;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::error::ApiError;

/// The header that carries the cluster secret between nodes.
pub const SECRET_HEADER: &str = "x-ripple-secret";

/// The same, parsed once (a lookup by `&str` parses the name each time).
static SECRET: HeaderName = HeaderName::from_static(SECRET_HEADER);

/// A token or secret: compared in constant time, never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (in the length of the candidate).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = (mine.len() ^ candidate.len()) as u8 | (mine.len() != candidate.len()) as u8;
        for (i, b) in candidate.iter().enumerate() {
            diff |= b ^ mine.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// What a token may do; each level includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Admin,
}

/// One `[auth] tokens` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token: Secret,
    pub access: Access,
}

/// The node's access rules.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<Token>,
    cluster_secret: Option<Secret>,
}

/// What a route needs.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    Peer,
    Client(Access),
}

fn needs(method: &Method, path: &str) -> Needs {
    if path == "/health" {
        Needs::Nothing
    } else if path.starts_with("/internal/") {
        Needs::Peer
    } else if path == "/v1/sync" || path == "/v1/repair" {
        Needs::Client(Access::Admin)
    } else if method == Method::GET || method == Method::HEAD {
        Needs::Client(Access::Read)
    } else {
        Needs::Client(Access::Write)
    }
}

impl Auth {
    pub fn new(tokens: Vec<Token>, cluster_secret: Option<Secret>) -> Auth {
        Auth {
            tokens,
            cluster_secret,
        }
    }

    /// Whether a request carries the cluster secret.
    fn is_peer(&self, req: &Request) -> bool {
        match (&self.cluster_secret, req.headers().get(&SECRET)) {
            (Some(secret), Some(given)) => secret.matches(given.as_bytes()),
            _ => false,
        }
    }

    /// Lets a request through, or says why not.
    pub fn check(&self, req: &Request) -> Result<(), ApiError> {
        let needs = needs(req.method(), req.uri().path());
        if needs == Needs::Nothing || self.is_peer(req) {
            return Ok(());
        }
        if req.headers().contains_key(&SECRET) {
            return Err(unauthorized("the cluster secret is not valid"));
        }
        match needs {
            Needs::Nothing => Ok(()),
            Needs::Peer if self.cluster_secret.is_some() => Err(unauthorized(
                "this route is for cluster nodes: it needs the cluster secret",
            )),
            // Without a cluster secret, node-to-node routes are as open as
            // the rest: to an admin token when auth is on, to all when off.
            Needs::Peer => self.client(req, Access::Admin),
            Needs::Client(access) => self.client(req, access),
        }
    }

    fn client(&self, req: &Request, access: Access) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                unauthorized("this node needs a bearer token: Authorization: Bearer <token>")
            })?;
        // Every token is compared, so timing does not tell which matched.
        let mut found: Option<Access> = None;
        for t in &self.tokens {
            if t.token.matches(given.as_bytes()) {
                found = found.max(Some(t.access));
            }
        }
        match found {
            None => Err(unauthorized("the bearer token is not valid")),
            Some(have) if have < access => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this token has {} access; {} {} needs {}",
                    name(have),
                    req.method(),
                    req.uri().path(),
                    name(access)
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

fn name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Admin => "admin",
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The `WWW-Authenticate` value sent with a 401.
pub fn challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"ripple\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = hyper::Request::builder().method(method).uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    fn auth() -> Auth {
        Auth::new(
            vec![
                Token {
                    token: Secret::new("reader-token-123"),
                    access: Access::Read,
                },
                Token {
                    token: Secret::new("writer-token-123"),
                    access: Access::Write,
                },
                Token {
                    token: Secret::new("admin-token-1234"),
                    access: Access::Admin,
                },
            ],
            Some(Secret::new("cluster-secret-1")),
        )
    }

    fn status(a: &Auth, r: Request) -> u16 {
        match a.check(&r) {
            Ok(()) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn access_levels() {
        let a = auth();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(status(&a, req(Method::GET, "/health", &[])), 200);
        assert_eq!(status(&a, req(Method::GET, "/v1/kv/k", &[])), 401);
        assert_eq!(
            status(
                &a,
                req(
                    Method::GET,
                    "/v1/kv/k",
                    &[("authorization", &bearer("nope"))]
                )
            ),
            401
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::GET,
                    "/v1/kv/k",
                    &[("authorization", &bearer("reader-token-123"))]
                )
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::PUT,
                    "/v1/kv/k",
                    &[("authorization", &bearer("reader-token-123"))]
                )
            ),
            403
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::PUT,
                    "/v1/kv/k",
                    &[("authorization", &bearer("writer-token-123"))]
                )
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::POST,
                    "/v1/sync",
                    &[("authorization", &bearer("writer-token-123"))]
                )
            ),
            403
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::POST,
                    "/v1/sync",
                    &[("authorization", &bearer("admin-token-1234"))]
                )
            ),
            200
        );
        // An anti-entropy pass is admin's, like a sync; digests are reads.
        for (method, path, token, code) in [
            (Method::POST, "/v1/repair", "writer-token-123", 403),
            (Method::POST, "/v1/repair", "admin-token-1234", 200),
            (Method::GET, "/v1/digest", "reader-token-123", 200),
        ] {
            let r = req(method, path, &[("authorization", &bearer(token))]);
            assert_eq!(status(&a, r), code, "{path} with {token}");
        }
        // Node-to-node routes need the cluster secret, whatever the token.
        assert_eq!(
            status(
                &a,
                req(
                    Method::GET,
                    "/internal/v1/feed",
                    &[("authorization", &bearer("admin-token-1234"))]
                )
            ),
            401
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::GET,
                    "/internal/v1/feed",
                    &[(SECRET_HEADER, "cluster-secret-1")]
                )
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::PUT,
                    "/v1/kv/k",
                    &[(SECRET_HEADER, "cluster-secret-1")]
                )
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                req(
                    Method::PUT,
                    "/v1/kv/k",
                    &[(SECRET_HEADER, "cluster-secret-2")]
                )
            ),
            401
        );
    }

    #[test]
    fn off_by_default() {
        let a = Auth::default();
        assert_eq!(status(&a, req(Method::PUT, "/v1/kv/k", &[])), 200);
        assert_eq!(status(&a, req(Method::GET, "/internal/v1/feed", &[])), 200);
    }

    #[test]
    fn secrets_compare_exactly_and_never_print() {
        let s = Secret::new("abc");
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abcd"));
        assert!(!s.matches(b"ab"));
        assert!(!s.matches(b""));
        assert!(!s.matches(b"abd"));
        assert_eq!(format!("{s:?}"), "<secret>");
    }
}
