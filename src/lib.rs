//! Ripple: a replicated key-value store with an HTTP API.
//!
//! Every key has one master node; writes go to the master, any node serves
//! reads, and the nodes converge in the background. One module per concept:

/// The command line: serve, the client commands, status, sync, dev-cluster.
pub mod cli;
/// HTTP clients of Ripple nodes (CLI, peers, tests).
pub mod client;
/// The cluster: members, placement (rendezvous hashing), the peer client.
pub mod cluster;
/// TOML configuration, defaults and validation.
pub mod config;
/// The HTTP layer: v1 API, the seed's routes, forwarding, the server loop.
pub mod http;
/// The node core: read and write paths, versions, conditions.
pub mod node;
/// Replication: the change feed, pullers, tombstone collection.
pub mod replication;
/// The storage seam: the `Storage` trait and its engines.
pub mod storage;
/// TLS (rustls) for the server, peers and the CLI.
pub mod tls;
