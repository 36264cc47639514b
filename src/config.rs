//! The node's TOML configuration: parsing, defaults, and validation with
//! messages that name the offending key.
//!
//! ```toml
//! node_id = "n1"
//! listen = "127.0.0.1:7070"
//! data_dir = "./ripple-data"
//! [storage]
//! engine = "embedded"
//! [limits]
//! max_key_bytes = 1024
//! max_value_bytes = 16777216
//! max_header_bytes = 65536
//! [cluster]
//! members = [ { id = "n1", url = "http://127.0.0.1:7070" } ]
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::http::auth::{Secret, Token};

/// A whole node configuration, after defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_node_id")]
    pub node_id: String,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[tls]`: HTTPS for clients and peers; off while `cert` is unset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM); with `key`, the node serves
    /// HTTPS only.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The CA certificates (PEM) that peers' certificates must chain to;
    /// needed when a member's URL is `https://`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether this node serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[auth]`: client tokens; access control is off while there are none.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<Token>,
}

/// `[storage]`: which engine keeps the data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub engine: Engine,
    /// The database URL (`mysql://user:pass@host:port/db` or
    /// `postgres://...`); SQL engines only.
    #[serde(default)]
    pub url: Option<String>,
    /// The table name (and prefix of the others); SQL engines only.
    #[serde(default = "default_table")]
    pub table: String,
    /// Database connections kept; SQL engines only.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// How long a node waits at start for an unreachable database, in
    /// seconds, before giving up; SQL engines only.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// The embedded engine's page cache, in MiB (redb's cache of the
    /// file's pages): most of a node's memory beyond its connections.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
    /// How often the embedded engine folds its memtable (writes made
    /// durable by the write-ahead log) into the redb file, at the latest,
    /// in milliseconds. Longer folds share more of the B-tree's page
    /// copies between records; the memtable's 16 MiB bound applies anyway.
    #[serde(default = "default_apply_interval_ms")]
    pub apply_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: Engine::default(),
            url: None,
            table: default_table(),
            pool_size: default_pool_size(),
            connect_timeout_secs: default_connect_timeout_secs(),
            cache_mib: default_cache_mib(),
            apply_interval_ms: default_apply_interval_ms(),
        }
    }
}

fn default_table() -> String {
    "ripple_kv".into()
}
fn default_pool_size() -> u32 {
    8
}
fn default_cache_mib() -> usize {
    128
}
fn default_apply_interval_ms() -> u64 {
    5000
}
fn default_connect_timeout_secs() -> u64 {
    60
}

/// The storage engines this build has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// redb, in `data_dir`.
    #[default]
    Embedded,
    /// MySQL or MariaDB at `url`.
    Mysql,
    /// PostgreSQL at `url`.
    Postgres,
}

/// `[limits]`: what a client may send.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: default_max_key_bytes(),
            max_value_bytes: default_max_value_bytes(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            request_timeout_secs: default_request_timeout_secs(),
        }
    }
}

/// `[cluster]`: every member of the cluster, the same list on every node.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub members: Vec<Member>,
    /// The secret nodes present to each other; required with auth on and
    /// more than one member.
    #[serde(default)]
    pub secret: Option<Secret>,
}

/// `[replication]`: how nodes pull each other's feeds and collect
/// tombstones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Most records in one feed answer.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most value bytes in one feed answer (one record always fits).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a feed request waits for a change before answering empty.
    #[serde(default = "default_long_poll_ms")]
    pub long_poll_ms: u64,
    /// How long a puller waits after applying an answer with more than one
    /// change before it asks again, while it is caught up: the changes of
    /// that time come in one answer (0: ask at once).
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// How long a write with `replicas=` waits before answering 504.
    #[serde(default = "default_replica_timeout_ms")]
    pub replica_timeout_ms: u64,
    /// How long a tombstone is kept after every peer has applied it.
    #[serde(default = "default_tombstone_grace_secs")]
    pub tombstone_grace_secs: u64,
    /// How often tombstones are collected.
    #[serde(default = "default_gc_interval_secs")]
    pub gc_interval_secs: u64,
    /// How often the node compares range digests with each peer and pulls
    /// what the change feeds missed (0: only on demand, `POST /v1/repair`).
    #[serde(default = "default_anti_entropy_interval_secs")]
    pub anti_entropy_interval_secs: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
            long_poll_ms: default_long_poll_ms(),
            batch_linger_ms: default_batch_linger_ms(),
            replica_timeout_ms: default_replica_timeout_ms(),
            tombstone_grace_secs: default_tombstone_grace_secs(),
            gc_interval_secs: default_gc_interval_secs(),
            anti_entropy_interval_secs: default_anti_entropy_interval_secs(),
        }
    }
}

fn default_batch_max_records() -> usize {
    1000
}
fn default_batch_max_bytes() -> usize {
    4 << 20
}
fn default_long_poll_ms() -> u64 {
    20_000
}
fn default_batch_linger_ms() -> u64 {
    1
}
fn default_replica_timeout_ms() -> u64 {
    5_000
}
fn default_tombstone_grace_secs() -> u64 {
    3_600
}
fn default_gc_interval_secs() -> u64 {
    60
}
fn default_anti_entropy_interval_secs() -> u64 {
    600
}

/// One cluster member: its node id and the base URL peers reach it at.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: String,
    pub url: String,
}

fn default_node_id() -> String {
    "n1".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./ripple-data")
}
fn default_max_key_bytes() -> usize {
    1024
}
fn default_max_value_bytes() -> usize {
    16 << 20
}
fn default_max_header_bytes() -> usize {
    64 << 10
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    512
}
fn default_request_timeout_secs() -> u64 {
    30
}

/// Largest key a node may be configured to take: percent-encoded (up to
/// three bytes a byte) it must still fit in a request line.
pub const MAX_KEY_BYTES_LIMIT: usize = 8 << 10;
/// Largest value a node may be configured to take.
pub const MAX_VALUE_BYTES_LIMIT: usize = 1 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: default_node_id(),
            listen: default_listen(),
            data_dir: default_data_dir(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
            replication: ReplicationConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// Reads and parses `path` (no validation yet: flags may still override).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// Checks every value and fills the member list of a single node.
    pub fn validate(&mut self) -> anyhow::Result<()> {
        check_node_id("node_id", &self.node_id)?;
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > MAX_KEY_BYTES_LIMIT {
            bail!(
                "limits.max_key_bytes must be between 1 and {MAX_KEY_BYTES_LIMIT}, not {}",
                l.max_key_bytes
            );
        }
        if l.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            bail!(
                "limits.max_value_bytes must be at most {MAX_VALUE_BYTES_LIMIT}, not {}",
                l.max_value_bytes
            );
        }
        if l.max_header_bytes < 1024 || l.max_header_bytes > (1 << 20) {
            bail!(
                "limits.max_header_bytes must be between 1024 and 1048576, not {}",
                l.max_header_bytes
            );
        }
        self.validate_storage()?;
        self.validate_auth()?;
        if l.max_connections == 0 || l.max_connections > 100_000 {
            bail!(
                "limits.max_connections must be between 1 and 100000, not {}",
                l.max_connections
            );
        }
        if l.max_in_flight == 0 || l.max_in_flight > 100_000 {
            bail!(
                "limits.max_in_flight must be between 1 and 100000, not {}",
                l.max_in_flight
            );
        }
        if l.request_timeout_secs == 0 || l.request_timeout_secs > 3600 {
            bail!(
                "limits.request_timeout_secs must be between 1 and 3600, not {}",
                l.request_timeout_secs
            );
        }
        let r = &self.replication;
        if r.batch_max_records == 0 || r.batch_max_records > 100_000 {
            bail!(
                "replication.batch_max_records must be between 1 and 100000, not {}",
                r.batch_max_records
            );
        }
        if r.batch_max_bytes == 0 {
            bail!("replication.batch_max_bytes must be above 0");
        }
        if r.long_poll_ms == 0 || r.long_poll_ms > 60_000 {
            bail!(
                "replication.long_poll_ms must be between 1 and 60000, not {}",
                r.long_poll_ms
            );
        }
        if r.batch_linger_ms > 100 {
            bail!(
                "replication.batch_linger_ms must be between 0 and 100, not {}",
                r.batch_linger_ms
            );
        }
        if r.replica_timeout_ms == 0 || r.replica_timeout_ms > 600_000 {
            bail!(
                "replication.replica_timeout_ms must be between 1 and 600000, not {}",
                r.replica_timeout_ms
            );
        }
        if r.gc_interval_secs == 0 {
            bail!("replication.gc_interval_secs must be above 0");
        }
        if self.storage.cache_mib == 0 || self.storage.cache_mib > 1 << 20 {
            bail!(
                "storage.cache_mib must be between 1 and 1048576, not {}",
                self.storage.cache_mib
            );
        }
        if !(1..=600_000).contains(&self.storage.apply_interval_ms) {
            bail!(
                "storage.apply_interval_ms must be between 1 and 600000 (10 minutes), not {}",
                self.storage.apply_interval_ms
            );
        }
        if r.anti_entropy_interval_secs > 7 * 86_400 {
            bail!(
                "replication.anti_entropy_interval_secs must be at most 604800 (a week; 0 turns it off), not {}",
                r.anti_entropy_interval_secs
            );
        }
        if self.cluster.members.is_empty() {
            self.cluster.members.push(Member {
                id: self.node_id.clone(),
                url: format!(
                    "{}://{}",
                    if self.tls.enabled() { "https" } else { "http" },
                    self.listen
                ),
            });
        }
        let mut seen = HashSet::new();
        for (i, m) in self.cluster.members.iter().enumerate() {
            check_node_id(&format!("cluster.members[{i}].id"), &m.id)?;
            if !seen.insert(m.id.as_str()) {
                bail!("cluster.members: the id {:?} appears more than once", m.id);
            }
            check_url(&format!("cluster.members[{i}].url"), &m.url)?;
            if m.id != self.node_id && m.url.starts_with("https:") && self.tls.ca.is_none() {
                bail!(
                    "cluster.members[{i}].url is https: set tls.ca to the CA certificate (PEM) that signed the peers' certificates"
                );
            }
        }
        if !seen.contains(self.node_id.as_str()) {
            bail!(
                "cluster.members does not list this node's node_id {:?}",
                self.node_id
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together: set both (HTTPS) or neither (HTTP)");
        }
        Ok(())
    }
}

impl Config {
    fn validate_auth(&self) -> anyhow::Result<()> {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        let mut seen = HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let t = t.token.expose();
            if t.len() < 16 || t.len() > 256 || !printable(t) {
                bail!("auth.tokens[{i}].token must be 16 to 256 printable ASCII characters without spaces");
            }
            if !seen.insert(t) {
                bail!("auth.tokens[{i}].token repeats an earlier token");
            }
        }
        if let Some(s) = &self.cluster.secret {
            let s = s.expose();
            if s.len() < 16 || s.len() > 256 || !printable(s) {
                bail!("cluster.secret must be 16 to 256 printable ASCII characters without spaces");
            }
        }
        if !self.auth.tokens.is_empty()
            && self.cluster.members.len() > 1
            && self.cluster.secret.is_none()
        {
            bail!("auth is on ([auth] tokens) and the cluster has several members: set [cluster] secret so the nodes can reach each other");
        }
        Ok(())
    }

    fn validate_storage(&self) -> anyhow::Result<()> {
        let s = &self.storage;
        let scheme = match s.engine {
            Engine::Embedded => {
                if s.url.is_some() {
                    bail!("storage.url is for the mysql and postgres engines; the embedded engine keeps its data in data_dir");
                }
                return Ok(());
            }
            Engine::Mysql => "mysql://",
            Engine::Postgres => "postgres",
        };
        match &s.url {
            None => bail!(
                "storage.url is required with engine = {:?}",
                format!("{:?}", s.engine).to_lowercase()
            ),
            Some(url) if !url.starts_with(scheme) => {
                bail!("storage.url must start with {scheme:?} for this engine")
            }
            Some(_) => {}
        }
        let t = s.table.as_bytes();
        let ok = !t.is_empty()
            && t.len() <= 40
            && (t[0].is_ascii_alphabetic() || t[0] == b'_')
            && t.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !ok {
            bail!("storage.table must be 1 to 40 of letters, digits and '_', starting with a letter or '_', not {:?}", s.table);
        }
        if s.pool_size == 0 || s.pool_size > 1000 {
            bail!(
                "storage.pool_size must be between 1 and 1000, not {}",
                s.pool_size
            );
        }
        if s.engine == Engine::Mysql
            && self.limits.max_key_bytes > crate::storage::sql::MYSQL_MAX_KEY_BYTES
        {
            bail!(
                "limits.max_key_bytes must be at most {} with the mysql engine (the longest key InnoDB can index), not {}",
                crate::storage::sql::MYSQL_MAX_KEY_BYTES,
                self.limits.max_key_bytes
            );
        }
        Ok(())
    }
}

/// Node ids appear in versions and URLs: 1 to 64 of `[A-Za-z0-9_.-]`.
fn check_node_id(name: &str, id: &str) -> anyhow::Result<()> {
    if !crate::node::version::is_node_id(id) {
        bail!("{name} must be 1 to 64 characters of letters, digits, '_', '.' or '-', not {id:?}");
    }
    Ok(())
}

fn check_url(name: &str, url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} is not a URL: {url:?}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        bail!("{name} must look like http://host:port or https://host:port, not {url:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text).and_then(|mut c| c.validate().map(|_| c)) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn defaults_make_a_single_node() {
        let mut c = Config::parse("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.cluster.members.len(), 1);
        assert_eq!(c.cluster.members[0].url, "http://127.0.0.1:7070");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("nodeid = \"x\"").contains("nodeid"));
        assert!(err("[limits]\nmax_key_bytes = 0").contains("max_key_bytes"));
        assert!(err("[limits]\nmax_key_bytes = -1").contains("max_key_bytes"));
        assert!(err("[replication]\nbatch_linger_ms = 101").contains("batch_linger_ms"));
        assert!(err("listen = \"nowhere\"").contains("listen"));
        assert!(err("[storage]\nengine = \"oracle\"").contains("oracle"));
        assert!(err("node_id = \"a b\"").contains("node_id"));
        assert!(err("[cluster]\nmembers = [{id = \"n2\", url = \"http://h:1\"}]").contains("n1"));
        assert!(err("[cluster]\nmembers = [{id = \"n1\", url = \"http://h:1\"}, {id = \"n1\", url = \"http://h:2\"}]")
            .contains("more than once"));
        assert!(
            err("[cluster]\nmembers = [{id = \"n1\", url = \"ftp://h\"}]")
                .contains("members[0].url")
        );
    }
}
