//! A fault-injecting TCP proxy for one link between two nodes (modelled on
//! `tests/common/proxy.rs`). Node i reaches node j only through the proxy
//! of the link i→j, so the chaos checker can, per link and at run time:
//!
//! - **cut** it: the listening socket is closed, so new connections are
//!   refused (RST, as from a host whose process is gone), and every live
//!   connection is dropped; restoring binds the same port again;
//! - make it **slow**: every chunk forwarded, either way, waits a delay;
//! - make it **lossy**: each chunk drops the whole connection with some
//!   probability, mid-stream.
//!
//! A link whose target node is down is closed the same way as a cut one.
//! Proxies listen on ports outside the kernel's ephemeral range, so while a
//! link is cut no outgoing connection can take its port and keep it from
//! being bound again.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cli::rng::Rng;

/// What a link does now.
#[derive(Debug, Clone, Default)]
struct Settings {
    /// Where connections go; `None` while the target node is down.
    target: Option<SocketAddr>,
    cut: bool,
    /// Added before every chunk is forwarded.
    delay: Duration,
    /// Probability, per chunk, of dropping the connection.
    loss: f64,
    /// Bumped to drop every live connection.
    epoch: u64,
}

impl Settings {
    fn open(&self) -> bool {
        !self.cut && self.target.is_some()
    }
}

/// One proxied link. Dropping it stops it and drops its connections.
pub struct Proxy {
    pub addr: SocketAddr,
    settings: watch::Sender<Settings>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a closed proxy (no target yet) on a free loopback port
    /// outside the ephemeral range; `rng` seeds its lossy drops.
    pub async fn start(rng: &mut Rng) -> anyhow::Result<Proxy> {
        let (listener, addr) = bind_safe_port(rng).await?;
        let (settings, rx) = watch::channel(Settings::default());
        let task = tokio::spawn(accept_loop(addr, Some(listener), rx, rng.fork()));
        Ok(Proxy {
            addr,
            settings,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where connections go from now on (`None`: the node is down; the link
    /// refuses connections). A change drops live connections.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        self.settings.send_modify(|s| {
            s.target = target;
            s.epoch += 1;
        });
    }

    /// Refuses new connections and drops live ones (`true`), or lets them
    /// through again.
    pub fn set_cut(&self, cut: bool) {
        self.settings.send_modify(|s| {
            if cut && !s.cut {
                s.epoch += 1;
            }
            s.cut = cut;
        });
    }

    /// Delay added to every chunk; zero restores the link.
    pub fn set_delay(&self, delay: Duration) {
        self.settings.send_modify(|s| s.delay = delay);
    }

    /// Per-chunk probability of dropping the connection; 0 restores it.
    pub fn set_loss(&self, loss: f64) {
        self.settings.send_modify(|s| s.loss = loss);
    }

    /// Clears cut, delay and loss (the target stays).
    pub fn heal(&self) {
        self.settings.send_modify(|s| {
            s.cut = false;
            s.delay = Duration::ZERO;
            s.loss = 0.0;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        TAKEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.addr.port());
        // Ends every connection task (they watch the epoch).
        self.settings.send_modify(|s| {
            s.cut = true;
            s.epoch += 1;
        });
    }
}

/// The ports of this process's proxies, open or closed.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The kernel's ephemeral port range.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Binds a loopback port that no outgoing connection will be given.
async fn bind_safe_port(rng: &mut Rng) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let (lo, hi) = ephemeral_range();
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    if lo > 12_000 {
        ranges.push((10_000, lo.min(40_000)));
    }
    if hi < 64_000 {
        ranges.push((hi + 1, 65_535));
    }
    if ranges.is_empty() {
        anyhow::bail!(
            "the ephemeral port range {lo}-{hi} leaves no room for the chaos proxies' ports"
        );
    }
    for _ in 0..5_000 {
        let (a, b) = ranges[rng.index(ranges.len())];
        let port = rng.range(a as u64, b as u64 + 1) as u16;
        // A proxy that is closed (its node not started yet, or cut) has
        // released its port: never hand that port to another proxy.
        if !TAKEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            let addr = listener.local_addr()?;
            return Ok((listener, addr));
        }
        TAKEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
    }
    anyhow::bail!("found no free loopback port for a proxy")
}

async fn accept_loop(
    addr: SocketAddr,
    mut listener: Option<TcpListener>,
    mut rx: watch::Receiver<Settings>,
    mut rng: Rng,
) {
    let mut failed_binds = 0u32;
    loop {
        let now = rx.borrow_and_update().clone();
        if !now.open() {
            // Closing the socket makes the kernel refuse connections.
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    if failed_binds > 0 {
                        eprintln!(
                            "chaos: proxy {addr}: listening again after {} failed attempts",
                            failed_binds
                        );
                    }
                    failed_binds = 0;
                }
                Err(e) => {
                    failed_binds += 1;
                    if failed_binds % 100 == 1 {
                        eprintln!("chaos: proxy {addr}: cannot listen again yet ({e}); retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                let Some(target) = now.target else { continue };
                let seed = rng.next_u64();
                tokio::spawn(connection(inbound, target, now.epoch, rx.clone(), seed));
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Forwards one connection both ways until either side closes, the epoch
/// changes (cut, target change) or a lossy link drops it.
async fn connection(
    inbound: TcpStream,
    target: SocketAddr,
    epoch: u64,
    mut rx: watch::Receiver<Settings>,
    seed: u64,
) {
    let settings = rx.clone();
    let ended = async move {
        loop {
            if rx.borrow_and_update().epoch != epoch {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    let forward = async move {
        let outbound = TcpStream::connect(target).await?;
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (ri, wi) = inbound.into_split();
        let (ro, wo) = outbound.into_split();
        let mut rng = Rng::new(seed);
        let up = pump(ri, wo, settings.clone(), rng.fork());
        let down = pump(ro, wi, settings, rng.fork());
        tokio::try_join!(up, down).map(|_| ())
    };
    tokio::select! {
        _ = ended => {}
        _ = forward => {}
    }
}

/// Copies one direction chunk by chunk, applying the link's delay and loss.
/// An error (or a drop) ends the whole connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    settings: watch::Receiver<Settings>,
    mut rng: Rng,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let (delay, loss) = {
            let s = settings.borrow();
            (s.delay, s.loss)
        };
        if loss > 0.0 && rng.chance(loss) {
            return Err(std::io::Error::other(
                "the lossy link dropped the connection",
            ));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn cut_refuses_and_restore_reopens_the_same_port() {
        let mut rng = Rng::new(1);
        let proxy = Proxy::start(&mut rng).await.unwrap();
        let (lo, hi) = ephemeral_range();
        assert!(!(lo..=hi).contains(&proxy.addr.port()));
        // No target yet: refused.
        assert!(TcpStream::connect(proxy.addr).await.is_err());
        proxy.set_target(Some(echo().await));
        let mut ok = None;
        for _ in 0..100 {
            if let Ok(v) = round_trip(proxy.addr).await {
                ok = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ok.as_deref(), Some(&b"ping"[..]));

        // A live connection dies with the cut, and new ones are refused.
        let mut live = TcpStream::connect(proxy.addr).await.unwrap();
        live.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        live.read_exact(&mut buf).await.unwrap();
        proxy.set_cut(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), live.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the live connection should be dropped");
        assert!(TcpStream::connect(proxy.addr).await.is_err());

        proxy.set_cut(false);
        let mut back = false;
        for _ in 0..100 {
            if round_trip(proxy.addr).await.is_ok() {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back, "the proxy should listen again on its port");
    }

    #[tokio::test]
    async fn slow_delays_and_lossy_drops() {
        let mut rng = Rng::new(2);
        let proxy = Proxy::start(&mut rng).await.unwrap();
        proxy.set_target(Some(echo().await));
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.set_delay(Duration::from_millis(100));
        let start = std::time::Instant::now();
        assert_eq!(round_trip(proxy.addr).await.unwrap(), b"ping");
        // One chunk each way.
        assert!(start.elapsed() >= Duration::from_millis(200));
        proxy.heal();
        proxy.set_loss(1.0);
        assert!(round_trip(proxy.addr).await.is_err());
        proxy.heal();
        assert_eq!(round_trip(proxy.addr).await.unwrap(), b"ping");
    }
}
