//! `ripple verify --url a,b,c`: compares the nodes' range digests and names
//! the ranges whose data differs; with `--repair`, has every node run an
//! anti-entropy pass and compares again.
//!
//! Writes still replicating make digests differ for a moment, so a
//! difference is only reported when it lasts `--settle-ms`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::client::Client;
use crate::replication::digest::{self, RangeDigest, RangeJson, RANGES};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The nodes to compare, separated by commas (two or more).
    #[arg(long, env = "RIPPLE_URL")]
    pub url: String,
    /// Bearer token (read access; admin with --repair).
    #[arg(long, env = "RIPPLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to check https:// nodes' certificates against.
    #[arg(long, env = "RIPPLE_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// How long a difference must last to be reported, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub settle_ms: u64,
    /// Have every node pull what it lacks from its peers, then compare
    /// again.
    #[arg(long)]
    pub repair: bool,
}

/// One node's digest answer.
#[derive(Debug, Deserialize)]
struct Answer {
    node_id: String,
    records: u64,
    ranges: Vec<RangeJson>,
}

/// A node's digests.
struct NodeDigests {
    id: String,
    records: u64,
    ranges: Vec<RangeDigest>,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let urls: Vec<&str> = args
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.len() < 2 {
        bail!("verify compares nodes: give two or more URLs, separated by commas");
    }
    let clients = urls
        .iter()
        .map(|u| super::client(u, args.token.as_deref(), args.cacert.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settle = Duration::from_millis(args.settle_ms);
    let (nodes, differing) = compare(&clients, &urls, settle).await?;
    if differing.is_empty() || !args.repair {
        return report(&nodes, &differing);
    }
    println!("{} of {RANGES} ranges differ; repairing", differing.len());
    for (client, url) in clients.iter().zip(&urls) {
        let reply = client
            .request(Method::POST, "/v1/repair", &[], Bytes::new())
            .await
            .with_context(|| format!("asking {url} to repair"))?;
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        if reply.status != StatusCode::OK && reply.status != StatusCode::GATEWAY_TIMEOUT {
            bail!(
                "{url}: repair failed ({}): {}",
                reply.status,
                reply.error_message()
            );
        }
        println!(
            "{}: pulled {} records{}",
            v["node_id"].as_str().unwrap_or(url),
            v["records_applied"].as_u64().unwrap_or(0),
            if v["complete"].as_bool() == Some(true) {
                String::new()
            } else {
                " (incomplete: some peers failed)".into()
            }
        );
        for p in v["peers"].as_array().into_iter().flatten() {
            if let Some(e) = p["error"].as_str() {
                println!("  from {}: {e}", p["id"].as_str().unwrap_or("?"));
            }
        }
    }
    let (nodes, differing) = compare(&clients, &urls, settle).await?;
    report(&nodes, &differing)
}

/// Fetches every node's digests until they agree or `settle` has passed.
async fn compare(
    clients: &[Client],
    urls: &[&str],
    settle: Duration,
) -> anyhow::Result<(Vec<NodeDigests>, Vec<usize>)> {
    let deadline = Instant::now() + settle;
    loop {
        let mut nodes = Vec::with_capacity(clients.len());
        for (client, url) in clients.iter().zip(urls) {
            nodes.push(fetch(client, url).await?);
        }
        let differing: Vec<usize> = (0..RANGES)
            .filter(|r| nodes.iter().any(|n| n.ranges[*r] != nodes[0].ranges[*r]))
            .collect();
        if differing.is_empty() || Instant::now() >= deadline {
            return Ok((nodes, differing));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn fetch(client: &Client, url: &str) -> anyhow::Result<NodeDigests> {
    let reply = client
        .request(Method::GET, "/v1/digest", &[], Bytes::new())
        .await
        .with_context(|| format!("fetching the digest of {url}"))?;
    if reply.status != StatusCode::OK {
        bail!(
            "{url}: digest failed ({}): {}",
            reply.status,
            reply.error_message()
        );
    }
    let answer: Answer = serde_json::from_slice(&reply.body)
        .with_context(|| format!("{url}: the digest answer is not valid"))?;
    let ranges = digest::parse_json(&answer.ranges)
        .map_err(|e| anyhow::anyhow!("{url}: the digest answer is not valid: {e}"))?;
    Ok(NodeDigests {
        id: answer.node_id,
        records: answer.records,
        ranges,
    })
}

fn report(nodes: &[NodeDigests], differing: &[usize]) -> anyhow::Result<()> {
    let counts: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {}", n.id, n.records))
        .collect();
    if differing.is_empty() {
        println!(
            "consistent: {} nodes agree on all {RANGES} ranges (records: {})",
            nodes.len(),
            counts.join(", ")
        );
        return Ok(());
    }
    for r in differing {
        let cells: Vec<String> = nodes
            .iter()
            .map(|n| {
                let d = n.ranges[*r];
                format!(
                    "{} {} records {:08x}",
                    n.id,
                    d.records,
                    (d.sum >> 96) as u32
                )
            })
            .collect();
        println!("range {}: {}", digest::range_name(*r), cells.join(", "));
    }
    bail!(
        "{} of {RANGES} ranges differ between {} nodes (records: {})",
        differing.len(),
        nodes.len(),
        counts.join(", ")
    )
}
