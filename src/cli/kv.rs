//! The client commands: get, put, delete, list. Values go to stdout as raw
//! bytes; errors go to stderr (by `main`) with a non-zero exit.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::StatusCode;
use tokio::io::AsyncReadExt;

use super::Target;

pub async fn get(target: &Target, key: &str) -> anyhow::Result<()> {
    let reply = target.client()?.get(key).await?;
    match reply.status {
        StatusCode::OK => {
            let mut out = std::io::stdout().lock();
            out.write_all(&reply.body)?;
            out.flush()?;
            Ok(())
        }
        StatusCode::NOT_FOUND => bail!("key not found: {key}"),
        status => bail!("get failed ({status}): {}", reply.error_message()),
    }
}

pub async fn put(
    target: &Target,
    key: &str,
    value: Option<String>,
    file: Option<PathBuf>,
    content_type: Option<String>,
) -> anyhow::Result<()> {
    let client = target.client()?;
    let value = match (value, file) {
        (Some(v), _) => Bytes::from(v),
        (None, Some(path)) => Bytes::from(
            tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, None) => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .context("cannot read the value from stdin")?;
            Bytes::from(buf)
        }
    };
    let reply = client.put(key, value, content_type.as_deref()).await?;
    match reply.status {
        StatusCode::CREATED | StatusCode::OK => {
            let what = if reply.status == StatusCode::CREATED {
                "created"
            } else {
                "replaced"
            };
            println!(
                "{what} {key} (version {})",
                reply.header("etag").unwrap_or("?").trim_matches('"')
            );
            Ok(())
        }
        status => bail!("put failed ({status}): {}", reply.error_message()),
    }
}

pub async fn delete(target: &Target, key: &str) -> anyhow::Result<()> {
    let reply = target.client()?.delete(key).await?;
    match reply.status {
        StatusCode::NO_CONTENT => {
            println!("deleted {key}");
            Ok(())
        }
        StatusCode::NOT_FOUND => bail!("key not found: {key}"),
        status => bail!("delete failed ({status}): {}", reply.error_message()),
    }
}

pub async fn list(target: &Target, prefix: &str) -> anyhow::Result<()> {
    let client = target.client()?;
    let mut cursor: Option<String> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let (keys, next) = client.list_page(prefix, cursor.as_deref(), None).await?;
        for key in keys {
            writeln!(out, "{key}")?;
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    out.flush()?;
    Ok(())
}
