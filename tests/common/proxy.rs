//! A TCP proxy between nodes that a test can cut and restore: the links of
//! a cluster under test go through one each, so partitions are real
//! refused and dropped connections on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

struct State {
    target: Mutex<Option<SocketAddr>>,
    cut: AtomicBool,
    /// Bumped on every cut: live connections end when it changes.
    generation: watch::Sender<u64>,
}

/// One proxied link.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port, on `rt`.
    pub fn start(rt: &Handle) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(State {
            target: Mutex::new(None),
            cut: AtomicBool::new(false),
            generation: watch::Sender::new(0),
        });
        let s = state.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = *s.target.lock().unwrap();
                if s.cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Some(target) = target else {
                    drop(inbound);
                    continue;
                };
                let mut generation = s.generation.subscribe();
                tokio::spawn(async move {
                    let mut inbound = inbound;
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = generation.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where connections go.
    pub fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = Some(target);
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}
