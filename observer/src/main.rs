//! observer: eBPF HTTP traffic observer with business context.
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand};
use observer::{agent, insights, origin_join, registry, sink};

/// Every exchange allocates its strings on the capture thread and frees them on a sink's; mimalloc handles that
/// cross-thread pattern with less work than glibc's arenas (`cargo xtask bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Capture HTTP exchanges on this node, enrich them with the registry and send them to the sinks.
    Run(Box<agent::RunArgs>),
    /// Validate, import and fingerprint for the application / API-key registry.
    Registry(registry::RegistryCommand),
    /// Manage observer's ClickHouse schema (apply migrations, print DDL).
    Schema(sink::SchemaCommand),
    /// Findings from traffic: the fleet-wide runner over ClickHouse, list findings, replay an events file through
    /// the detectors, evaluate them on generated scenarios.
    Insights(insights::cli::InsightsCommand),
    /// Origin across nodes: fill, in ClickHouse, the origin of hops whose parent ran on another node.
    Origin(origin_join::OriginCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => agent::run(*args)?,
        Command::Registry(cmd) => registry::run(cmd)?,
        Command::Schema(cmd) => tokio::runtime::Runtime::new()?.block_on(cmd.run())?,
        Command::Insights(cmd) => insights::cli::run(cmd)?,
        Command::Origin(cmd) => origin_join::run(cmd)?,
    }
    Ok(())
}
