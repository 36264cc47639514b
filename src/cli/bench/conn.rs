//! One benchmark connection: a keep-alive HTTP/1.1 connection written by
//! hand for the load generator, owned by the one task that sends its
//! requests back to back. A request is one write; an answer is read into
//! one buffer and its head parsed with `httparse`. No second task, channel
//! or header map per request (hyper's client has all three), so the load
//! generator leaves more of a shared machine to the server it measures. A
//! failure is classified (connect, timeout, closed, reset, protocol) so the
//! report can count transport errors by kind.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    fn from_io(e: std::io::Error) -> Failure {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Reset(e.to_string()),
            UnexpectedEof => Failure::Closed("the server closed the connection mid-answer".into()),
            _ => Failure::Other(e.to_string()),
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

/// One request: method, percent-encoded path and body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Bytes,
}

/// Most bytes an answer's head may take, and its body.
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 1 << 30;
const MAX_HEADERS: usize = 32;

/// One open connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// The request being written.
    out: Vec<u8>,
    /// The server said `Connection: close`, or the stream ended.
    done: bool,
}

impl Conn {
    /// Connects (TCP, no Nagle).
    pub async fn open(target: &Target) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(&target.authority)
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", target.authority)))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 << 10),
            out: Vec::with_capacity(1024),
            done: false,
        })
    }

    /// Whether this connection cannot take another request: the server
    /// closed it (while idle, or by saying so), or sent bytes nobody asked
    /// for.
    pub fn is_closed(&self) -> bool {
        if self.done || !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends one request and reads the whole answer. `Err(None)` when the
    /// request could not be written (the server had closed the
    /// connection), so it can go on a new connection without counting as
    /// a failure.
    pub async fn send(
        &mut self,
        target: &Target,
        req: &Request,
    ) -> Result<Answer, Option<Failure>> {
        self.out.clear();
        let out = &mut self.out;
        out.extend_from_slice(req.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(target.host.as_bytes());
        if let Some(auth) = &target.auth {
            out.extend_from_slice(b"\r\nauthorization: ");
            out.extend_from_slice(auth.as_bytes());
        }
        if !req.body.is_empty() || req.method == "PUT" {
            out.extend_from_slice(b"\r\ncontent-length: ");
            out.extend_from_slice(req.body.len().to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&req.body);
        if self.stream.write_all(&self.out).await.is_err() {
            self.done = true;
            return Err(None);
        }
        self.read_answer(req.method == "HEAD").await.map_err(|f| {
            self.done = true;
            Some(f)
        })
    }

    /// Reads more bytes into the buffer; the end of the stream is an error.
    async fn fill(&mut self) -> Result<(), Failure> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(Failure::Closed(
                "the server closed the connection before the whole answer".into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::from_io(e)),
        }
    }

    async fn read_answer(&mut self, head_only: bool) -> Result<Answer, Failure> {
        let (head_len, head) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::Protocol(format!(
                    "an answer head over {MAX_HEAD} bytes"
                )));
            }
            self.fill().await?;
        };
        self.buf.advance(head_len);
        if head.close {
            self.done = true;
        }
        let no_body = head_only || head.status == 204 || head.status == 304 || head.status < 200;
        let body = if no_body {
            Bytes::new()
        } else if head.chunked {
            self.read_chunked().await?
        } else if let Some(len) = head.length {
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.split_to(len).freeze()
        } else {
            // No length: the body runs to the end of the stream.
            self.done = true;
            loop {
                if self.buf.len() > MAX_BODY {
                    return Err(Failure::Protocol("an answer body over 1 GiB".into()));
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(Failure::from_io(e)),
                }
            }
            self.buf.split().freeze()
        };
        Ok(Answer {
            status: head.status,
            etag: head.etag,
            body,
        })
    }

    /// A chunked body, decoded.
    async fn read_chunked(&mut self) -> Result<Bytes, Failure> {
        let mut body = BytesMut::new();
        loop {
            let line = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Failure::Protocol("a chunk size line too long".into()));
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .filter(|n| body.len() + n <= MAX_BODY)
                .ok_or_else(|| Failure::Protocol("a bad chunk size".into()))?;
            self.buf.advance(line + 2);
            // The chunk, and the CRLF after it (after the last, empty one:
            // no trailers expected, just the CRLF).
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(Failure::Protocol("a chunk not ended by CRLF".into()));
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
            if size == 0 {
                return Ok(body.freeze());
            }
        }
    }
}

/// What the benchmark takes from an answer's head.
#[derive(Debug)]
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
    etag: Option<HeaderValue>,
}

/// The head at the start of `buf` and its length, or `None` when it is
/// not all there yet.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Protocol(format!("a bad answer head: {e}"))),
    };
    let mut head = Head {
        status: res.code.unwrap_or(0),
        length: None,
        chunked: false,
        close: false,
        etag: None,
    };
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| Failure::Protocol(format!("a bad content-length: {value:?}")))?;
            head.length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("etag") {
            head.etag = HeaderValue::from_bytes(h.value).ok();
        }
    }
    Ok(Some((len, head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bad_ones_are_protocol_errors() {
        let answer = b"HTTP/1.1 201 Created\r\netag: \"1-n1\"\r\ncontent-length: 3\r\n\r\nabc";
        let (len, head) = parse_head(answer).unwrap().unwrap();
        assert_eq!(
            (len, head.status, head.length),
            (answer.len() - 3, 201, Some(3))
        );
        assert_eq!(head.etag.unwrap(), "\"1-n1\"");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(Failure::Protocol(_))),
                "{bad:?}"
            );
        }
    }
}
