//! `ripple dev-cluster --nodes 3`: a cluster on one machine for trying
//! Ripple out. Starts N nodes on consecutive ports, each with its config and
//! data under one folder, prints their URLs, and stops them all (SIGTERM,
//! so they drain and close cleanly) on Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The first node's port; the others follow.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// The address every node listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The folder for every node's config and data.
    #[arg(long, default_value = "./ripple-dev")]
    pub dir: PathBuf,
}

pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be from 1 to 64");
    }
    if args.base_port.checked_add(args.nodes - 1).is_none() {
        bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    }
    let addrs: Vec<SocketAddr> = (0..args.nodes)
        .map(|i| SocketAddr::new(args.host, args.base_port + i))
        .collect();
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ id = \"n{}\", url = \"http://{a}\" }}", i + 1))
        .collect();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the ripple binary")?;
    let mut children: Vec<(String, Child)> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let data_dir = args.dir.join(&id);
        let config = format!(
            "node_id = \"{id}\"\nlisten = \"{addr}\"\ndata_dir = {data_dir:?}\n\n[cluster]\nmembers = [\n  {}\n]\n",
            members.join(",\n  ")
        );
        let config_path = args.dir.join(format!("{id}.toml"));
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        if line.is_empty() {
            let status = child.wait().await?;
            stop_all(&mut children).await;
            bail!("node {id} did not start ({status}); see its errors above");
        }
        print!("{line}");
        children.push((id, child));
    }
    println!(
        "{} nodes running, data and configs in {}. Try:\n  ripple --help\n  ripple put hello world --url {}\n  ripple status --url {}\nCtrl-C stops them all.",
        args.nodes,
        args.dir.display(),
        format_args!("http://{}", addrs[0]),
        format_args!("http://{}", addrs[addrs.len() - 1]),
    );
    let exited = wait_for_stop(&mut children).await;
    stop_all(&mut children).await;
    if let Some(id) = exited {
        bail!("node {id} exited; stopped the others");
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (`None`) or for a node to exit (its id).
async fn wait_for_stop(children: &mut [(String, Child)]) -> Option<String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok()?;
    let any_exit = futures_first_exit(children);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        id = any_exit => Some(id),
    }
}

async fn futures_first_exit(children: &mut [(String, Child)]) -> String {
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return id.clone();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn stop_all(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid of a child this process started.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (id, child) in children.iter_mut() {
        match tokio::time::timeout(std::time::Duration::from_secs(40), child.wait()).await {
            Ok(Ok(status)) => eprintln!("node {id} stopped ({status})"),
            _ => {
                let _ = child.kill().await;
                eprintln!("node {id} killed");
            }
        }
    }
}
