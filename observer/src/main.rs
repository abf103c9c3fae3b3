//! observer: eBPF HTTP traffic observer with business context.
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
enum Command {
    /// Manage observer's ClickHouse schema (apply migrations, print DDL).
    Schema(sink::SchemaCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema(cmd) => tokio::runtime::Runtime::new()?.block_on(cmd.run()),
    }
}
