//! A small HTTP/1.1 client for Ripple's API, used by the CLI and the tests.
//!
//! It takes one or more base URLs and, when a node cannot be reached (the
//! connection fails), moves on to the next, as the seed retried on "server
//! has gone away". A request that reached a node is never retried
//! elsewhere: its answer, whatever it is, is the answer.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::keypath;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// One node's address.
#[derive(Clone, Debug)]
struct Base {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
}

/// A client over a list of nodes, tried in order.
#[derive(Clone, Debug)]
pub struct Client {
    bases: Vec<Base>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The error message of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    /// A client for `urls`: comma-separated `http://host:port` base URLs.
    pub fn new(urls: &str) -> anyhow::Result<Client> {
        let mut bases = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let uri: hyper::Uri = url.parse().map_err(|_| anyhow!("not a URL: {url:?}"))?;
            if uri.scheme_str() != Some("http") {
                bail!("only http:// URLs are supported, not {url:?}");
            }
            let authority = uri
                .authority()
                .ok_or_else(|| anyhow!("the URL {url:?} has no host"))?;
            let port = authority.port_u16().unwrap_or(80);
            bases.push(Base {
                authority: format!("{}:{port}", authority.host()),
            });
        }
        if bases.is_empty() {
            bail!("no URL given");
        }
        Ok(Client { bases })
    }

    /// Sends one request to the first node that answers.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut failures = Vec::new();
        for base in &self.bases {
            let stream =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&base.authority))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        failures.push(format!("{}: {e}", base.authority));
                        continue;
                    }
                    Err(_) => {
                        failures.push(format!("{}: connect timed out", base.authority));
                        continue;
                    }
                };
            let _ = stream.set_nodelay(true);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path_and_query)
                .header(HOST, &base.authority);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let req = req
                .body(Full::new(body.clone()))
                .context("cannot build the request")?;
            return tokio::time::timeout(REQUEST_TIMEOUT, send(stream, req))
                .await
                .map_err(|_| anyhow!("{}: no answer in {REQUEST_TIMEOUT:?}", base.authority))?
                .with_context(|| format!("request to {} failed", base.authority));
        }
        bail!("no node could be reached: {}", failures.join("; "))
    }

    /// `GET /v1/kv/{key}`.
    pub async fn get(&self, key: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, &kv_path(key), &[], Bytes::new())
            .await
    }

    /// `PUT /v1/kv/{key}` with an optional content type.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut headers = Vec::new();
        if let Some(ct) = content_type {
            headers.push((
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_str(ct).map_err(|_| anyhow!("invalid content type {ct:?}"))?,
            ));
        }
        self.request(Method::PUT, &kv_path(key), &headers, value)
            .await
    }

    /// `DELETE /v1/kv/{key}`.
    pub async fn delete(&self, key: &str) -> anyhow::Result<Reply> {
        self.request(Method::DELETE, &kv_path(key), &[], Bytes::new())
            .await
    }

    /// One page of `GET /v1/kv`: the keys and the cursor of the next page.
    pub async fn list_page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let mut query = format!("/v1/kv?prefix={}", keypath::encode_query(prefix));
        if let Some(c) = cursor {
            query.push_str(&format!("&cursor={}", keypath::encode_query(c)));
        }
        if let Some(l) = limit {
            query.push_str(&format!("&limit={l}"));
        }
        let reply = self.request(Method::GET, &query, &[], Bytes::new()).await?;
        if reply.status != StatusCode::OK {
            bail!(
                "listing failed ({}): {}",
                reply.status,
                reply.error_message()
            );
        }
        #[derive(serde::Deserialize)]
        struct Page {
            keys: Vec<String>,
            cursor: Option<String>,
        }
        let page: Page =
            serde_json::from_slice(&reply.body).context("the listing is not valid JSON")?;
        Ok((page.keys, page.cursor))
    }
}

/// The v1 path of a key.
pub fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", keypath::encode_path(key))
}

async fn send(stream: TcpStream, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    drop(sender);
    driver.abort();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
