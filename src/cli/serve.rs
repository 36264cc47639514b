//! `ripple serve`: load and check the config, open storage, serve HTTP
//! until SIGTERM or SIGINT, then drain requests and close storage.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use crate::cluster::{Members, Peers};
use crate::config::{Config, Engine};
use crate::http::auth::Auth;
use crate::http::{self, AppState, ServerLimits};
use crate::node::{Limits, Node};
use crate::replication::Replication;
use crate::storage::embedded::{self, Embedded};
use crate::storage::sql::{Dialect, SqlEngine};
use crate::storage::Storage;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file; without one, a single node on 127.0.0.1:7070.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`); port 0 picks a free one.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This node's id (overrides `node_id`).
    #[arg(long)]
    pub node_id: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    config.validate().context("invalid configuration")?;
    init_logging();

    let s = &config.storage;
    let sql = |dialect| async move {
        let url = s.url.as_deref().unwrap_or_default();
        let patience = std::time::Duration::from_secs(s.connect_timeout_secs);
        let engine = SqlEngine::open(dialect, url, &s.table, s.pool_size, patience).await?;
        engine
            .check_value_limit(dialect, config.limits.max_value_bytes)
            .await?;
        anyhow::Ok(engine)
    };
    let storage: Arc<dyn Storage> = match s.engine {
        Engine::Embedded => Arc::new(Embedded::open_with(
            &config.data_dir,
            embedded::Options {
                cache_bytes: s.cache_mib << 20,
                apply_every: std::time::Duration::from_millis(s.apply_interval_ms),
            },
        )?),
        Engine::Mysql => Arc::new(sql(Dialect::MySql).await?),
        Engine::Postgres => Arc::new(sql(Dialect::Postgres).await?),
    };
    let limits = Limits {
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
    };
    let node = Arc::new(Node::new(config.node_id.clone(), storage, limits).await?);

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let acceptor = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key).context("tls")?),
        _ => None,
    };
    let connector = config
        .tls
        .ca
        .as_deref()
        .map(crate::tls::connector)
        .transpose()
        .context("tls.ca")?;
    let members = Members::new(&config.node_id, config.cluster.members.clone());
    let peers = Arc::new(Peers::new(
        &members,
        config.cluster.secret.as_ref(),
        connector.as_ref(),
    )?);
    let repl = Replication::new(node.clone(), members, peers, config.replication.clone());
    repl.check_feed_not_behind().await?;
    repl.start();
    let l = &config.limits;
    let server_limits = ServerLimits {
        max_header_bytes: l.max_header_bytes,
        max_connections: l.max_connections,
        max_in_flight: l.max_in_flight,
        request_timeout: std::time::Duration::from_secs(l.request_timeout_secs),
    };
    let state = AppState::new(http::Shared {
        node: node.clone(),
        repl: repl.clone(),
        auth: Arc::new(Auth::new(
            config.auth.tokens.clone(),
            config.cluster.secret.clone(),
        )),
        public_url: http::base_url(addr, acceptor.is_some()).into(),
        limits: server_limits,
        in_flight: Arc::new(tokio::sync::Semaphore::new(server_limits.max_in_flight)),
    });
    tracing::info!(node_id = %config.node_id, engine = ?config.storage.engine, "storage open");
    // The one line on stdout: tests and scripts read the bound address here.
    println!(
        "ripple node {} listening on {}",
        config.node_id,
        http::base_url(addr, acceptor.is_some())
    );
    std::io::stdout().flush()?;

    http::serve(
        listener,
        http::front::Front::new(state.clone()),
        http::shed_router(state),
        server_limits,
        acceptor,
        async {
            shutdown_signal().await;
            // Ends the feed long-polls first, so draining does not wait on them.
            repl.stop();
        },
    )
    .await;
    tracing::info!("requests drained; closing storage");
    node.close().await?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
