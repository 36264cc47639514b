//! The nodes of a chaos run: child processes of this same binary
//! (`ripple serve --config`), each with its config, data and log under the
//! work dir, wired through one proxy per link. Starting, `kill -9`,
//! SIGSTOP/SIGCONT and wiping are the node faults; every child dies with
//! this process (SIGKILL on drop, and the kernel's parent-death signal
//! should this process itself be killed).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::history::{now_us, rel, Micros};
use super::proxy::Proxy;
use crate::cli::rng::Rng;
use crate::client::Endpoint;

/// How long a node may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
    Paused,
}

/// The node each client request goes to, by index; replaced when a node
/// restarts on a new port.
pub type Endpoints = Arc<RwLock<Vec<Arc<Endpoint>>>>;

pub struct Nodes {
    pub ids: Vec<String>,
    dir: PathBuf,
    exe: PathBuf,
    children: Vec<Option<Child>>,
    pub state: Vec<NodeState>,
    /// `links[from][to]`: node `from` reaches node `to` through it.
    links: Vec<Vec<Proxy>>,
    pub endpoints: Endpoints,
    t0: Micros,
}

impl Nodes {
    /// Writes every node's config under `dir` and starts the proxies; the
    /// nodes themselves start with `start_all`.
    pub async fn new(dir: &Path, n: usize, rng: &mut Rng, t0: Micros) -> anyhow::Result<Nodes> {
        let exe = std::env::current_exe().context("cannot find the ripple binary")?;
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut links = Vec::new();
        for _ in 0..n {
            let mut row = Vec::new();
            for _ in 0..n {
                row.push(Proxy::start(rng).await?);
            }
            links.push(row);
        }
        let placeholder = Arc::new(Endpoint::from_url("http://127.0.0.1:9")?);
        let nodes = Nodes {
            ids,
            dir: dir.to_owned(),
            exe,
            children: (0..n).map(|_| None).collect(),
            state: vec![NodeState::Down; n],
            links,
            endpoints: Arc::new(RwLock::new(vec![placeholder; n])),
            t0,
        };
        for i in 0..n {
            std::fs::create_dir_all(nodes.node_dir(i))?;
            let members: Vec<String> = (0..n)
                .map(|j| {
                    format!(
                        "{{ id = \"{}\", url = \"{}\" }}",
                        nodes.ids[j],
                        nodes.links[i][j].url()
                    )
                })
                .collect();
            let data = nodes.data_dir(i);
            let data = data
                .to_str()
                .ok_or_else(|| anyhow!("the work dir path is not UTF-8"))?;
            let config = format!(
                "node_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
                 [replication]\nlong_poll_ms = 1000\ngc_interval_secs = 1\n\
                 tombstone_grace_secs = 0\nreplica_timeout_ms = 2000\n\n\
                 [cluster]\nmembers = [\n  {}\n]\n",
                members.join(",\n  "),
                id = nodes.ids[i],
            );
            std::fs::write(nodes.config_path(i), config)?;
        }
        Ok(nodes)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.ids[i])
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("ripple.toml")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("data")
    }

    /// Where node i's stderr goes (appended across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("node.log")
    }

    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        &self.links[from][to]
    }

    pub fn endpoint(&self, i: usize) -> Arc<Endpoint> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner())[i].clone()
    }

    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            self.start(i).await?;
        }
        Ok(())
    }

    /// Starts node i on its data dir and points its incoming links and the
    /// clients at it.
    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log_path = self.log_path(i);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(
            log,
            "==== chaos: starting {} at {} ====",
            self.ids[i],
            rel(now_us(), self.t0)
        )?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only sets this child's
        // parent-death signal, so the node dies if the checker is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {}", self.ids[i]))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            _ => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "node {} did not start (exit: {}); the end of {}:\n{}",
                    self.ids[i],
                    status.map_or("none".to_owned(), |s| s.to_string()),
                    log_path.display(),
                    tail.join("\n")
                );
            }
        };
        // Keep reading, so a later line never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or_else(|| anyhow!("no URL in node {}'s first line: {line:?}", self.ids[i]))?
            .to_owned();
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        for from in 0..self.len() {
            self.links[from][i].set_target(Some(addr));
        }
        self.endpoints.write().unwrap_or_else(|p| p.into_inner())[i] =
            Arc::new(Endpoint::from_url(&url)?);
        self.children[i] = Some(child);
        self.state[i] = NodeState::Up;
        Ok(())
    }

    /// `kill -9` node i and waits until the process is gone; its incoming
    /// links then refuse connections, like a host whose process died.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            if let Some(pid) = child.id() {
                // SAFETY: signals to a child this process started and has
                // not reaped yet. A stopped process must be continued to die
                // promptly on some kernels; SIGKILL works either way.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGCONT);
                }
            }
            let _ = child.wait().await;
        }
        for from in 0..self.len() {
            self.links[from][i].set_target(None);
        }
        self.state[i] = NodeState::Down;
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.children[i].as_ref().and_then(Child::id) {
            // SAFETY: a signal to a live child of this process.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// SIGSTOP: the node freezes with its sockets open.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.state[i] = NodeState::Paused;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        if self.state[i] == NodeState::Paused {
            self.state[i] = NodeState::Up;
        }
    }

    /// Deletes node i's data (it must be down).
    pub fn delete_data(&self, i: usize) -> anyhow::Result<()> {
        let data = self.data_dir(i);
        match std::fs::remove_dir_all(&data) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", data.display())),
        }
    }

    /// Kills every node and stops every proxy.
    pub async fn shutdown(&mut self) {
        for i in 0..self.len() {
            self.kill(i).await;
        }
        self.links.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // The last resort (a panic, a dropped future): SIGKILL now; tokio
        // reaps the processes (`kill_on_drop`).
        for child in self.children.iter().flatten() {
            if let Some(pid) = child.id() {
                // SAFETY: signals to children of this process.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGCONT);
                }
            }
        }
    }
}
