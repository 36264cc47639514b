//! `ripple status` (a node and its view of every member, as a table) and
//! `ripple sync` (make a node pull from every peer now and wait until it has
//! caught up).

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::Target;

pub async fn status(target: &Target, json: bool) -> anyhow::Result<()> {
    let reply = target
        .client()?
        .request(Method::GET, "/v1/status", &[], Bytes::new())
        .await?;
    if reply.status != StatusCode::OK {
        bail!(
            "status failed ({}): {}",
            reply.status,
            reply.error_message()
        );
    }
    if json {
        println!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&reply.body).context("the status is not JSON")?;
    println!(
        "node {}  last_seq {}  tombstones {}",
        text(&v["node_id"]),
        text(&v["last_seq"]),
        text(&v["tombstones"])
    );
    let mut rows = vec![[
        "MEMBER",
        "URL",
        "REACHABLE",
        "CURSOR",
        "LAST_SEQ",
        "LAG",
        "LAG_MS",
        "ACKED",
    ]
    .map(String::from)];
    for m in v["members"].as_array().into_iter().flatten() {
        let is_self = m["self"].as_bool().unwrap_or(false);
        rows.push([
            format!("{}{}", text(&m["id"]), if is_self { " (self)" } else { "" }),
            text(&m["url"]),
            match m["reachable"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            text(&m["cursor"]),
            text(&m["last_seq"]),
            text(&m["lag_changes"]),
            text(&m["lag_ms"]),
            text(&m["acked"]),
        ]);
    }
    print_table(&rows);
    for m in v["members"].as_array().into_iter().flatten() {
        if let Some(e) = m["last_error"].as_str() {
            println!("{}: {e}", text(&m["id"]));
        }
    }
    Ok(())
}

pub async fn sync(target: &Target, timeout_ms: u64) -> anyhow::Result<()> {
    let reply = target
        .client()?
        .request(
            Method::POST,
            &format!("/v1/sync?timeout_ms={timeout_ms}"),
            &[],
            Bytes::new(),
        )
        .await?;
    if reply.status != StatusCode::OK && reply.status != StatusCode::GATEWAY_TIMEOUT {
        bail!("sync failed ({}): {}", reply.status, reply.error_message());
    }
    let v: Value = serde_json::from_slice(&reply.body).context("the sync answer is not JSON")?;
    for p in v["peers"].as_array().into_iter().flatten() {
        let state = if p["caught_up"].as_bool() == Some(true) {
            "caught up".to_owned()
        } else if p["reachable"].as_bool() == Some(false) {
            format!("unreachable: {}", text(&p["error"]))
        } else {
            format!("behind: {}", text(&p["error"]))
        };
        println!(
            "{}: cursor {} of {} ({state})",
            text(&p["id"]),
            text(&p["cursor"]),
            text(&p["target"])
        );
    }
    if v["caught_up"].as_bool() != Some(true) {
        bail!(
            "node {} has not caught up with every peer",
            text(&v["node_id"])
        );
    }
    println!("node {} is caught up", text(&v["node_id"]));
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
