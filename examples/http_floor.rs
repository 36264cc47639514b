//! The HTTP floor for `bench/compare.sh`: Ripple's own server loop and
//! router answering every request with a constant 100-byte body, with no
//! storage behind it. What a Ripple GET costs above this is Ripple's.
//!
//! `cargo run --release --example http_floor -- 127.0.0.1:7199`

use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7199".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("http floor listening on http://{}", listener.local_addr()?);
    let body = Bytes::from(vec![b'x'; 100]);
    let router = Router::new().fallback(any(move || {
        let body = body.clone();
        async move { body }
    }));
    let limits = ripple::http::ServerLimits::generous();
    ripple::http::serve(listener, router.clone(), router, limits, None, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
