//! The history a chaos run records: one `Op` per client request, with its
//! wall-clock start and end, the node it went to, and what came back,
//! classified by what it tells about the write (applied, not applied, or
//! unknown). The checker (`check.rs`) reads nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::node::version::Version;

/// Microseconds since the Unix epoch (the clock the nodes' versions use).
pub type Micros = u64;

pub fn now_us() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Parses an ETag, `"<hex ts>-<node>"`, into a version.
pub fn parse_etag(etag: &str) -> Option<Version> {
    let inner = etag.trim().strip_prefix('"')?.strip_suffix('"')?;
    let (ts, node) = inner.split_once('-')?;
    if node.is_empty() {
        return None;
    }
    Some(Version {
        ts: u64::from_str_radix(ts, 16).ok()?,
        node: node.to_owned(),
    })
}

/// The precondition of a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    None,
    /// `If-Match` with an ETag from an earlier GET (quoted, as received).
    IfMatch(String),
    /// `If-None-Match: *` (create only).
    IfNoneMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `GET`, `?consistency=master` when `master`.
    Get {
        master: bool,
    },
    /// `PUT` of a value no other request writes.
    Put {
        value: String,
        cond: Cond,
    },
    Delete,
}

impl Kind {
    pub fn is_write(&self) -> bool {
        !matches!(self, Kind::Get { .. })
    }
}

/// What an answer (or its absence) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged: PUT 200/201 or DELETE 204, with the version
    /// of its ETag (`None` when it had none: a protocol violation).
    Written {
        status: u16,
        version: Option<Version>,
    },
    /// GET 200.
    Read {
        value: String,
        version: Option<Version>,
    },
    /// GET or DELETE 404: nothing there (a DELETE did nothing).
    NotFound,
    /// Certainly not applied: 412, 503 `master_unavailable` with
    /// `applied: "no"`, `storage_unavailable`, `overloaded`, or the node
    /// refused the connection (status 0).
    Refused { status: u16, why: String },
    /// May or may not have been applied: the connection broke after the
    /// request was sent, or 503 `master_unavailable` with
    /// `applied: "unknown"`, or no answer in time. `bounded`: the request
    /// cannot still be applied later than `LATE_APPLY` after `end` (false
    /// for a timeout, which may have been held anywhere).
    Unknown {
        status: u16,
        why: String,
        bounded: bool,
    },
    /// An answer the API does not document for this request (e.g. 500): a
    /// protocol violation. A write may have been applied.
    Unexpected { status: u16, why: String },
}

impl Outcome {
    /// A normal answer: the request did what the API says it does.
    pub fn is_ok(&self) -> bool {
        match self {
            Outcome::Written { .. } | Outcome::Read { .. } | Outcome::NotFound => true,
            Outcome::Refused { status, .. } => *status == 412,
            Outcome::Unknown { .. } | Outcome::Unexpected { .. } => false,
        }
    }
}

/// One client request.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    /// The node the client sent it to (index).
    pub node: usize,
    pub key: String,
    pub kind: Kind,
    pub start: Micros,
    pub end: Micros,
    pub outcome: Outcome,
}

/// `+12.345s` relative to `t0`.
pub fn rel(t: Micros, t0: Micros) -> String {
    let d = t as i128 - t0 as i128;
    format!("{:+.3}s", d as f64 / 1e6)
}

impl Op {
    /// One line, for violation reports and the history file.
    pub fn describe(&self, nodes: &[String], t0: Micros) -> String {
        let what = match &self.kind {
            Kind::Get { master: false } => "GET".to_owned(),
            Kind::Get { master: true } => "GET(consistency=master)".to_owned(),
            Kind::Put { value, cond } => match cond {
                Cond::None => format!("PUT {value}"),
                Cond::IfMatch(e) => format!("PUT {value} If-Match {e}"),
                Cond::IfNoneMatch => format!("PUT {value} If-None-Match *"),
            },
            Kind::Delete => "DELETE".to_owned(),
        };
        let how = match &self.outcome {
            Outcome::Written { status, version } => {
                format!("{status} version {}", show_version(version.as_ref()))
            }
            Outcome::Read { value, version } => {
                format!("200 {value} version {}", show_version(version.as_ref()))
            }
            Outcome::NotFound => "404".to_owned(),
            Outcome::Refused { status, why } => format!("refused {status} ({why})"),
            Outcome::Unknown {
                status,
                why,
                bounded,
            } => format!(
                "unknown {status}{} ({why})",
                if *bounded { "" } else { " unbounded" }
            ),
            Outcome::Unexpected { status, why } => format!("unexpected {status} ({why})"),
        };
        format!(
            "{what} on {} by client {} via {} [{} .. {}] -> {how}",
            self.key,
            self.client,
            nodes.get(self.node).map_or("?", String::as_str),
            rel(self.start, t0),
            rel(self.end, t0),
        )
    }
}

pub fn show_version(v: Option<&Version>) -> String {
    v.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etags() {
        let v = parse_etag("\"1a21a4346eb0000-n1\"").unwrap();
        assert_eq!(v.ts, 0x1a21a4346eb0000);
        assert_eq!(v.node, "n1");
        let dashed = parse_etag("\"ff-node-2\"").unwrap();
        assert_eq!(dashed.node, "node-2");
        assert!(parse_etag("1a2-n1").is_none());
        assert!(parse_etag("\"zz-n1\"").is_none());
        assert!(parse_etag("\"12\"").is_none());
        assert!(
            parse_etag("\"2-n1\"").unwrap() > parse_etag("\"1-n2\"").unwrap(),
            "versions order by ts first"
        );
        assert!(parse_etag("\"1-n2\"").unwrap() > parse_etag("\"1-n1\"").unwrap());
    }
}
