//! HTTP/1.1 clients of Ripple nodes, used by the CLI, by nodes to reach
//! their peers, and by the tests.
//!
//! An `Endpoint` is one node: it keeps idle keep-alive connections and
//! reuses them. A `Client` is a list of endpoints: when a node cannot be
//! reached (the connection fails), it moves on to the next, as the seed
//! retried on "server has gone away". A request that reached a node is never
//! retried elsewhere: its answer, whatever it is, is the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::keypath;
use crate::tls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time a CLI request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 32;

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The message of a JSON error body, or the body as text.
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

/// Why a request to one endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the request never reached the node.
    #[error("cannot connect to {0}: {1}")]
    Unreachable(String, String),
    /// The connection failed or timed out after the request was sent: the
    /// node may or may not have acted on it.
    #[error("request to {0} failed: {1}")]
    Failed(String, String),
}

/// One node, with a pool of keep-alive connections.
pub struct Endpoint {
    authority: String,
    host: HeaderValue,
    /// For `https://` URLs: the TLS client and the name the node's
    /// certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Headers sent with every request (credentials).
    extra: Vec<(HeaderName, HeaderValue)>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for a base URL `http://host:port`.
    pub fn from_url(url: &str) -> anyhow::Result<Endpoint> {
        Endpoint::from_url_with(url, None)
    }

    /// An endpoint for a base URL `http://host:port`, or `https://host:port`
    /// when a TLS client (`tls::connector`) is given.
    pub fn from_url_with(url: &str, tls: Option<&TlsConnector>) -> anyhow::Result<Endpoint> {
        let uri: hyper::Uri = url
            .trim()
            .parse()
            .map_err(|_| anyhow!("not a URL: {url:?}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("only http:// and https:// URLs are supported, not {url:?}"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("the URL {url:?} has no host"))?;
        let host_name = authority.host();
        let authority = format!(
            "{}:{}",
            host_name,
            authority
                .port_u16()
                .unwrap_or(if secure { 443 } else { 80 })
        );
        let host = HeaderValue::from_str(&authority).map_err(|_| anyhow!("bad host in {url:?}"))?;
        let tls = match (secure, tls) {
            (false, _) => None,
            (true, None) => bail!(
                "{url:?} is https: give the CA certificate that signed the node's (--cacert, or [tls] ca for peers)"
            ),
            (true, Some(connector)) => {
                let name = ServerName::try_from(host_name.trim_matches(['[', ']']).to_owned())
                    .map_err(|_| anyhow!("bad host in {url:?}"))?;
                Some((connector.clone(), name))
            }
        };
        Ok(Endpoint {
            authority,
            host,
            tls,
            extra: Vec::new(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Endpoint {
        self.extra.push((name, value));
        self
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends a request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        req.headers_mut().insert(HOST, self.host.clone());
        for (name, value) in &self.extra {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Failed(
                self.authority.clone(),
                format!("no answer within {timeout:?}"),
            )),
        }
    }

    async fn send_inner(&self, req: Request<Full<Bytes>>) -> Result<Reply, SendError> {
        // A pooled connection the server closed meanwhile refuses the request
        // before sending it; then a fresh connection takes it.
        let req = match self.checkout() {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(res) => return self.finish(sender, res).await,
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => {
                        return Err(SendError::Failed(
                            self.authority.clone(),
                            e.into_error().to_string(),
                        ))
                    }
                },
            },
            None => req,
        };
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(res) => self.finish(sender, res).await,
            Err(e) => Err(SendError::Failed(self.authority.clone(), e.to_string())),
        }
    }

    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let unreachable = |e: String| SendError::Unreachable(self.authority.clone(), e);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(stream).await,
            Some((connector, name)) => {
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), stream))
                        .await
                        .map_err(|_| {
                            unreachable(format!("no TLS handshake within {CONNECT_TIMEOUT:?}"))
                        })?
                        .map_err(|e| unreachable(format!("TLS: {e}")))?;
                handshake(stream).await
            }
        }
        .map_err(unreachable)
    }

    async fn finish(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        res: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Reply, SendError> {
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Failed(self.authority.clone(), e.to_string()))?
            .to_bytes();
        // Back to the pool once hyper is ready for the next request.
        if sender.ready().await.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Starts HTTP/1.1 on a connection; its driver runs as a task.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Builds a request.
pub fn request(
    method: Method,
    path_and_query: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::builder().method(method).uri(path_and_query);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.body(Full::new(body))
        .context("cannot build the request")
}

/// A client over a list of nodes, tried in order.
#[derive(Clone, Debug)]
pub struct Client {
    endpoints: Vec<Arc<Endpoint>>,
    timeout: Duration,
}

impl Client {
    /// A client for `urls`: comma-separated `http://host:port` base URLs.
    pub fn new(urls: &str) -> anyhow::Result<Client> {
        Client::with_token(urls, None)
    }

    /// A client that sends `Authorization: Bearer <token>` when given.
    pub fn with_token(urls: &str, token: Option<&str>) -> anyhow::Result<Client> {
        Client::with_options(urls, token, None)
    }

    /// A client with a token and, for `https://` URLs, a TLS client.
    pub fn with_options(
        urls: &str,
        token: Option<&str>,
        tls: Option<&TlsConnector>,
    ) -> anyhow::Result<Client> {
        let auth = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| anyhow!("the token must be printable ASCII"))
            })
            .transpose()?;
        let endpoints = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let e = Endpoint::from_url_with(u, tls)?;
                Ok(Arc::new(match &auth {
                    Some(a) => e.with_header(hyper::header::AUTHORIZATION, a.clone()),
                    None => e,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if endpoints.is_empty() {
            bail!("no URL given");
        }
        Ok(Client {
            endpoints,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Sends one request to the first node that can be reached.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let req = request(method.clone(), path_and_query, headers, body.clone())?;
            match endpoint.send(req, self.timeout).await {
                Ok(reply) => return Ok(reply),
                Err(SendError::Unreachable(_, e)) => {
                    failures.push(format!("{}: {e}", endpoint.authority()))
                }
                Err(e) => return Err(e.into()),
            }
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
        let reply = self
            .request(
                Method::GET,
                &list_path(prefix, cursor, limit),
                &[],
                Bytes::new(),
            )
            .await?;
        parse_list_page(&reply)
    }
}

/// The v1 path of a key.
pub fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", keypath::encode_path(key))
}

/// The v1 listing path.
pub fn list_path(prefix: &str, cursor: Option<&str>, limit: Option<usize>) -> String {
    let mut path = format!("/v1/kv?prefix={}", keypath::encode_query(prefix));
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={}", keypath::encode_query(c)));
    }
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    path
}

/// Reads a listing page answer.
pub fn parse_list_page(reply: &Reply) -> anyhow::Result<(Vec<String>, Option<String>)> {
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
