//! observer: eBPF HTTP traffic observer with business context.
mod cgroups;
mod enrich;
mod event;
mod flow;
mod http;
mod registry;
mod sink;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "observer",
    version,
    about = "Sidecar-free HTTP traffic observer with business context"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
