//! The front door: the service every connection hands its requests to.
//! It applies the node's limits and access rules to each request, then
//! sends key reads and writes (`/v1/kv/{key}`) straight to their handlers
//! and everything else through the router.
//!
//! Key requests skip the router because it is most of what a GET costs
//! above the bare HTTP loop: matching `{*key}` percent-decodes the key into
//! path parameters nobody reads (the handlers decode the raw path), and a
//! `from_fn` middleware boxes and clones per request. Measured with
//! callgrind: docs/BENCH.md, "The GET path".

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, StatusCode};
use tower_service::Service;

use super::error::ApiError;
use super::{auth, overloaded, v1, AppState};

/// Most header fields a request may carry.
pub const MAX_HEADERS: usize = 100;

/// The node's request service: limits and access, then dispatch.
#[derive(Clone)]
pub struct Front {
    state: AppState,
    router: Router,
}

impl Front {
    pub fn new(state: AppState) -> Front {
        Front {
            router: super::router(state.clone()),
            state,
        }
    }

    async fn handle(mut self, req: Request) -> Response {
        if let Err(res) = check_headers(&self.state, &req) {
            return *res;
        }
        if let Err(e) = self.state.auth.check(&req) {
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut res = e.into_response();
            if unauthorized {
                res.headers_mut()
                    .insert(hyper::header::WWW_AUTHENTICATE, auth::challenge());
            }
            return res;
        }
        let path = req.uri().path();
        let _permit =
            if path == "/health" || path.starts_with("/internal/") || is_blocking_read(&req) {
                None
            } else {
                match self.state.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => return overloaded("requests in flight"),
                }
            };
        let is_key = path.len() > v1::PREFIX.len() && path.starts_with(v1::PREFIX);
        let state = State(self.state.clone());
        match *req.method() {
            // HEAD goes through the router, which drops the body.
            Method::GET if is_key => v1::get(state, req).await.into_response(),
            Method::PUT if is_key => v1::put(state, req).await.into_response(),
            Method::DELETE if is_key => v1::delete(state, req).await.into_response(),
            _ => {
                let method = req.method().clone();
                // The router is always ready and never fails.
                let Ok(res) = self.router.call(req).await;
                method_not_allowed_as_json(res, &method)
            }
        }
    }
}

impl Service<hyper::Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req.map(Body::new)).await) })
    }
}

/// Whether `req` may be a blocking read (`min_version=`): it waits
/// without working, so it does not take one of `max_in_flight`'s slots;
/// `max_connections` bounds how many wait (one request per connection).
/// A query that only looks like one is refused by the handler anyway.
fn is_blocking_read(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req
            .uri()
            .query()
            .is_some_and(|q| q.contains("min_version="))
}

/// 431 with JSON for a request line and headers past the limits.
fn check_headers(state: &AppState, req: &Request) -> Result<(), Box<Response>> {
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > state.limits.max_header_bytes || headers.len() > MAX_HEADERS {
        return Err(Box::new(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request line and headers take {header_bytes} bytes in {} fields; the limits are {} bytes and {MAX_HEADERS} fields",
                    headers.len(),
                    state.limits.max_header_bytes
                ),
            )
            .into_response(),
        ));
    }
    Ok(())
}

/// Gives the router's own bodyless 405 answers a JSON body (keeping their
/// `Allow` header).
fn method_not_allowed_as_json(res: Response, method: &Method) -> Response {
    if res.status() != StatusCode::METHOD_NOT_ALLOWED || res.headers().contains_key(CONTENT_TYPE) {
        return res;
    }
    let allow = res.headers().get(hyper::header::ALLOW).cloned();
    let mut json = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this path; the Allow header lists what is"),
    )
    .into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(hyper::header::ALLOW, allow);
    }
    json
}
