//! One benchmark connection: a keep-alive HTTP/1.1 connection on hyper's
//! low-level client, owned by one task that sends requests back to back.
//! Unlike the pooled `client::Endpoint`, nothing is shared or locked, and a
//! failure is classified (connect, timeout, closed, reset, protocol) so the
//! report can count transport errors by kind.

use std::error::Error as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ETAG, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a connection goes: `host:port` and the `Host` header for it.
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: String,
    pub host: HeaderValue,
    /// `Authorization` for nodes with auth on.
    pub auth: Option<HeaderValue>,
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No connection could be made.
    Connect(String),
    /// No answer within the request timeout.
    Timeout,
    /// The server closed the connection before the whole answer.
    Closed(String),
    /// The connection was reset.
    Reset(String),
    /// The answer was not valid HTTP.
    Protocol(String),
    Other(String),
}

impl Failure {
    /// The name the report counts it under.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Closed(_) => "closed",
            Failure::Reset(_) => "reset",
            Failure::Protocol(_) => "protocol",
            Failure::Other(_) => "other",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Timeout => "no answer within --timeout".to_owned(),
            Failure::Connect(m)
            | Failure::Closed(m)
            | Failure::Reset(m)
            | Failure::Protocol(m)
            | Failure::Other(m) => m.clone(),
        }
    }

    fn from_hyper(e: hyper::Error) -> Failure {
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
                    return Failure::Reset(io.to_string());
                }
            }
            source = s.source();
        }
        let text = format!("{e}");
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            Failure::Protocol(text)
        } else if e.is_timeout() {
            Failure::Timeout
        } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
            Failure::Closed(text)
        } else {
            Failure::Other(text)
        }
    }
}

/// A whole answer, reduced to what the benchmark looks at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub etag: Option<HeaderValue>,
    pub body: Bytes,
}

/// One open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects (TCP, no Nagle) and starts hyper's connection task.
    pub async fn open(target: &Target) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(&target.authority)
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", target.authority)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", target.authority)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Whether the server closed this connection while it was idle.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer. `Err(Ok(req))` gives
    /// the request back when it was never sent (the connection had closed
    /// while idle), so it can go on a new connection without counting as a
    /// failure.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Answer, Result<Request<Full<Bytes>>, Failure>> {
        if self.sender.ready().await.is_err() {
            return Err(Ok(req));
        }
        let res = match self.sender.try_send_request(req).await {
            Ok(res) => res,
            Err(mut e) => {
                return Err(match e.take_message() {
                    Some(req) => Ok(req),
                    None => Err(Failure::from_hyper(e.into_error())),
                })
            }
        };
        let (mut parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Err(Failure::from_hyper(e)))?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            etag: parts.headers.remove(ETAG),
            body,
        })
    }
}

/// Builds a request for `path` (already percent-encoded).
pub fn request(
    target: &Target,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let uri: Uri = path
        .parse()
        .map_err(|e| format!("cannot build a request for {path:?}: {e}"))?;
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    req.headers_mut().insert(HOST, target.host.clone());
    if let Some(auth) = &target.auth {
        req.headers_mut()
            .insert(hyper::header::AUTHORIZATION, auth.clone());
    }
    Ok(req)
}
