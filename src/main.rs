//! The `ripple` binary: parses the command line and runs it.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = ripple::cli::Cli::parse();
    let result = cli
        .runtime()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(ripple::cli::run(cli)));
    if let Err(e) = result {
        eprintln!("ripple: error: {e:#}");
        std::process::exit(1);
    }
}
