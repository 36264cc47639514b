//! The `ripple` binary: parses the command line and runs it.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = ripple::cli::Cli::parse();
    if let Err(e) = ripple::cli::run(cli).await {
        eprintln!("ripple: error: {e:#}");
        std::process::exit(1);
    }
}
