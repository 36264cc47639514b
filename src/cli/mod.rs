//! The command line: `ripple serve` runs a node and `dev-cluster` runs
//! several; `get`, `put`, `delete`, `list`, `status`, `sync` and `verify`
//! are clients of running nodes.

pub mod bench;
pub mod chaos;
pub mod dev_cluster;
pub mod kv;
pub mod rng;
pub mod serve;
pub mod status;
pub mod verify;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Ripple: a replicated key-value store with an HTTP API.
#[derive(Debug, Parser)]
#[command(name = "ripple", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Print the value of KEY to stdout, byte for byte.
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Store VALUE (or stdin, or --file) under KEY.
    Put {
        key: String,
        /// The value; read from stdin when absent and no --file is given.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, short = 'f', conflicts_with = "value")]
        file: Option<std::path::PathBuf>,
        /// Content type stored with the value.
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY.
    Delete {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show a node and its view of every member: reachable, cursor, lag.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Make a node pull from every peer now and wait until it caught up.
    Sync {
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Run a cluster of N nodes on this machine, for trying Ripple out.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Load-test nodes: throughput, latency percentiles, replication lag.
    Bench(bench::BenchArgs),
    /// Chaos-test a local cluster: kill, stop, partition, slow and wipe
    /// nodes under load, then check convergence and that no acknowledged
    /// write was lost.
    Chaos(chaos::ChaosArgs),
    /// Compare nodes' range digests and name the ranges whose data
    /// differs; --repair has the nodes pull what they lack.
    Verify(verify::VerifyArgs),
    /// List keys, one per line, in byte order.
    List {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Which node(s) a client command talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// Node URL, or several separated by commas: each is tried in turn
    /// until one answers.
    #[arg(long, env = "RIPPLE_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Bearer token, for nodes with auth on.
    #[arg(long, env = "RIPPLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to check https:// nodes' certificates against.
    #[arg(long, env = "RIPPLE_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
}

impl Target {
    /// A client for these nodes, with the token and the CA.
    pub fn client(&self) -> anyhow::Result<crate::client::Client> {
        client(&self.url, self.token.as_deref(), self.cacert.as_deref())
    }
}

/// A client for `urls` with an optional token and CA certificate file.
pub fn client(
    urls: &str,
    token: Option<&str>,
    cacert: Option<&std::path::Path>,
) -> anyhow::Result<crate::client::Client> {
    let tls = cacert
        .map(|ca| crate::tls::connector(ca).context("--cacert"))
        .transpose()?;
    crate::client::Client::with_options(urls, token, tls.as_ref())
}

impl Cli {
    /// The runtime the command runs on: `bench` picks its own (see
    /// `--threads`), every other command a thread per core.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match &self.command {
            Command::Bench(args) => bench::runtime(args),
            _ => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Get { key, target } => kv::get(&target, &key).await,
        Command::Put {
            key,
            value,
            file,
            content_type,
            target,
        } => kv::put(&target, &key, value, file, content_type).await,
        Command::Delete { key, target } => kv::delete(&target, &key).await,
        Command::List { prefix, target } => kv::list(&target, &prefix).await,
        Command::Status { json, target } => status::status(&target, json).await,
        Command::Sync { timeout_ms, target } => status::sync(&target, timeout_ms).await,
        Command::DevCluster(args) => dev_cluster::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Verify(args) => verify::run(args).await,
    }
}
