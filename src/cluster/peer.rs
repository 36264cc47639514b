//! The node-to-node client: one keep-alive `Endpoint` per peer, and the
//! requests nodes make of each other (forwarded writes, master reads, feed
//! pulls, listings, status).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;

use super::Members;
use crate::client::{self, Endpoint, Reply, SendError};
use crate::http::auth::{Secret, SECRET_HEADER};
use crate::tls::TlsConnector;

/// The header a node adds to a request it forwards to a key's master, with
/// its own id: the master must then serve it itself, never forward again.
pub const FORWARDED_BY: &str = "x-ripple-forwarded-by";

/// How long a forwarded request may take at the master.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Clients for every peer.
pub struct Peers {
    endpoints: HashMap<String, Arc<Endpoint>>,
}

impl Peers {
    /// Clients for every peer of `members`, sending the cluster secret
    /// when there is one; `tls` checks the certificates of `https://` peers.
    pub fn new(
        members: &Members,
        secret: Option<&Secret>,
        tls: Option<&TlsConnector>,
    ) -> anyhow::Result<Peers> {
        let secret = secret
            .map(|s| HeaderValue::from_str(s.expose()))
            .transpose()
            .map_err(|_| anyhow::anyhow!("cluster.secret must be printable ASCII"))?;
        let mut endpoints = HashMap::new();
        for m in members.peers() {
            let mut endpoint = Endpoint::from_url_with(&m.url, tls)?;
            if let Some(s) = &secret {
                endpoint = endpoint.with_header(HeaderName::from_static(SECRET_HEADER), s.clone());
            }
            endpoints.insert(m.id.clone(), Arc::new(endpoint));
        }
        Ok(Peers { endpoints })
    }

    /// Sends a request to peer `id`.
    pub async fn send(
        &self,
        id: &str,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        let endpoint = self.endpoints.get(id).ok_or_else(|| {
            SendError::Unreachable(id.to_owned(), "not a peer of this node".into())
        })?;
        let req = client::request(method, path_and_query, headers, body)
            .map_err(|e| SendError::Failed(id.to_owned(), e.to_string()))?;
        endpoint.send(req, timeout).await
    }
}
