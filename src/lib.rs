//! Ripple: a replicated key-value store with an HTTP API.
//!
//! Every key has one master node; writes go to the master, any node serves
//! reads, and the nodes converge in the background. The modules follow the
//! concepts of docs/ and DESIGN:

/// The command line.
pub mod cli;
/// An HTTP client of the API, for the CLI and tests.
pub mod client;
/// TOML configuration, defaults and validation.
pub mod config;
/// The HTTP layer: v1 API, the seed's routes, the server loop.
pub mod http;
/// The node core: read and write paths, versions, conditions.
pub mod node;
/// The storage seam: the `Storage` trait and its engines.
pub mod storage;
