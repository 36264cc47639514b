//! The command line: `ripple serve` runs a node; `get`, `put`, `delete` and
//! `list` are a client of a running node's v1 API.

pub mod kv;
pub mod serve;

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
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Get { key, target } => kv::get(&target.url, &key).await,
        Command::Put {
            key,
            value,
            file,
            content_type,
            target,
        } => kv::put(&target.url, &key, value, file, content_type).await,
        Command::Delete { key, target } => kv::delete(&target.url, &key).await,
        Command::List { prefix, target } => kv::list(&target.url, &prefix).await,
    }
}
