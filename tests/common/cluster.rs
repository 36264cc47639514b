//! A cluster of real nodes on loopback for tests. Every link from node i to
//! node j goes through its own proxy, so a test can partition any set of
//! nodes from the others, and a node restarted on a new port is found again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::proxy::Proxy;
use super::{Client, Node};

/// Per-node config for a given generation (a wiped node starts a new
/// generation, e.g. in new SQL tables): usually a `[storage]` section. It is
/// appended right after the `[cluster]` members line, so leading keys
/// (`secret = ...`) land in `[cluster]`.
pub type NodeFn = Box<dyn Fn(usize, u32) -> String + Send + Sync>;

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Each node's config without its `[storage]` section.
    configs: Vec<String>,
    storage: NodeFn,
    generations: Vec<u32>,
    /// (from, to) -> the proxy of that link.
    links: HashMap<(usize, usize), Proxy>,
    pub dirs: Vec<PathBuf>,
    _root: tempfile::TempDir,
    /// Runs the proxies.
    pub proxy_rt: tokio::runtime::Runtime,
}

/// Node ids are n1..nN; index i is node n{i+1}.
pub fn node_id(i: usize) -> String {
    format!("n{}", i + 1)
}

impl Cluster {
    /// Starts `n` nodes; `extra` is TOML appended to every node's config
    /// (e.g. a `[replication]` section).
    pub fn start(n: usize, extra: &str) -> Cluster {
        Cluster::start_with_storage(n, extra, Box::new(|_, _| String::new()))
    }

    /// Starts `n` nodes whose storage `storage(i, generation)` describes.
    pub fn start_with_storage(n: usize, extra: &str, storage: NodeFn) -> Cluster {
        Cluster::start_inner(n, extra, storage, "http")
    }

    /// Starts `n` nodes that reach each other over `https://`; `extra`
    /// must hold their `[tls]` section.
    pub fn start_https(n: usize, extra: &str) -> Cluster {
        Cluster::start_inner(n, extra, Box::new(|_, _| String::new()), "https")
    }

    fn start_inner(n: usize, extra: &str, storage: NodeFn, scheme: &str) -> Cluster {
        let proxy_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut links = HashMap::new();
        for from in 0..n {
            for to in 0..n {
                links.insert((from, to), Proxy::start(proxy_rt.handle()));
            }
        }
        let mut dirs = Vec::new();
        let mut configs = Vec::new();
        for i in 0..n {
            let dir = root.path().join(node_id(i));
            std::fs::create_dir_all(&dir).unwrap();
            let members: Vec<String> = (0..n)
                .map(|j| {
                    format!(
                        "{{ id = \"{}\", url = \"{}\" }}",
                        node_id(j),
                        links[&(i, j)].url().replacen("http", scheme, 1)
                    )
                })
                .collect();
            let config = format!(
                "node_id = \"{}\"\n{extra}\n[cluster]\nmembers = [{}]\n",
                node_id(i),
                members.join(", ")
            );
            configs.push(config);
            dirs.push(dir);
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            configs,
            storage,
            generations: vec![0; n],
            links,
            dirs,
            _root: root,
            proxy_rt,
        };
        for i in 0..n {
            let node = cluster.spawn(i);
            cluster.nodes.push(node);
            cluster.retarget(i);
        }
        cluster
    }

    fn spawn(&self, i: usize) -> Node {
        let dir = &self.dirs[i];
        let config = dir.join("ripple.toml");
        let storage = (self.storage)(i, self.generations[i]);
        std::fs::write(&config, format!("{}\n{storage}\n", self.configs[i])).unwrap();
        Node::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()])
    }

    /// Points every link to node i at its current address.
    fn retarget(&self, i: usize) {
        let addr = self.nodes[i].addr().parse().unwrap();
        for from in 0..self.dirs.len() {
            self.links[&(from, i)].set_target(addr);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn client(&self, i: usize) -> Client {
        self.nodes[i].client()
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url.clone()
    }

    /// SIGKILL node i.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Starts node i again on its data dir (after `kill9` or `wipe`).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill9();
        let node = self.spawn(i);
        self.nodes[i] = node;
        self.retarget(i);
    }

    /// Kills node i, deletes its data and starts it empty.
    pub fn wipe(&mut self, i: usize) {
        self.nodes[i].kill9();
        let _ = std::fs::remove_dir_all(self.dirs[i].join("data"));
        self.generations[i] += 1;
        self.restart(i);
    }

    /// Cuts every link between `group` and the other nodes, both ways.
    pub fn partition(&self, group: &[usize]) {
        for ((from, to), proxy) in &self.links {
            if group.contains(from) != group.contains(to) {
                proxy.cut();
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.restore();
        }
    }

    /// The index of the master of `key` (by asking the placement code the
    /// nodes use).
    pub fn master_of(&self, key: &str) -> usize {
        let ids: Vec<String> = (0..self.len()).map(node_id).collect();
        ripple::cluster::placement::master_index(ids.iter().map(String::as_str), key).unwrap()
    }

    /// A key whose master is node `master`, built from `stem`.
    pub fn key_mastered_by(&self, master: usize, stem: &str) -> String {
        (0..)
            .map(|i| format!("{stem}-{i}"))
            .find(|k| self.master_of(k) == master)
            .unwrap()
    }

    /// Node i's feed id, as a puller learns it (an empty feed answer).
    pub async fn feed_id(&self, i: usize) -> String {
        let r = self
            .client(i)
            .request(
                hyper::Method::GET,
                "/internal/v1/feed?limit=0",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        r.header("x-ripple-feed-id").unwrap().to_owned()
    }

    /// Every live key and value on node i, through the v1 API.
    pub async fn contents(&self, i: usize) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let c = self.client(i);
        let mut out = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let (keys, next) = c.list_page("", cursor.as_deref(), Some(10_000)).await?;
            for k in keys {
                let r = c.get(&k).await?;
                if r.status == hyper::StatusCode::OK {
                    out.insert(k, r.body.to_vec());
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Waits until every node holds exactly `expected`; panics with the
    /// differences after `limit`. Returns how long it took.
    pub async fn converge_to(
        &self,
        expected: &BTreeMap<String, Vec<u8>>,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let mut diffs = Vec::new();
            for i in 0..self.len() {
                match self.contents(i).await {
                    Ok(c) if &c == expected => {}
                    Ok(c) => {
                        let missing: Vec<_> = expected
                            .keys()
                            .filter(|k| !c.contains_key(*k))
                            .take(5)
                            .collect();
                        let extra: Vec<_> = c
                            .keys()
                            .filter(|k| !expected.contains_key(*k))
                            .take(5)
                            .collect();
                        let wrong: Vec<_> = expected
                            .iter()
                            .filter(|(k, v)| c.get(*k).is_some_and(|cv| cv != *v))
                            .map(|(k, _)| k)
                            .take(5)
                            .collect();
                        diffs.push(format!(
                            "{}: missing {missing:?}, extra {extra:?}, wrong {wrong:?}",
                            node_id(i)
                        ));
                    }
                    Err(e) => diffs.push(format!("{}: {e}", node_id(i))),
                }
            }
            if diffs.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!("no convergence within {limit:?}:\n{}", diffs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until all nodes hold the same data, whatever it is.
    pub async fn converge(&self, limit: Duration) -> BTreeMap<String, Vec<u8>> {
        let start = Instant::now();
        loop {
            let first = self.contents(0).await;
            if let Ok(first) = first {
                let mut same = true;
                for i in 1..self.len() {
                    if self.contents(i).await.ok().as_ref() != Some(&first) {
                        same = false;
                        break;
                    }
                }
                if same {
                    return first;
                }
            }
            if start.elapsed() > limit {
                panic!("nodes did not converge within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
