//! Project tasks: `cargo xtask <command>`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

mod clickhouse;

#[derive(Parser)]
#[command(name = "xtask", about = "observer development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local ClickHouse dev server (ClickHouse 26.9 over chdb) in the foreground until interrupted.
    Clickhouse {
        /// HTTP port to listen on (127.0.0.1).
        #[arg(long, default_value_t = clickhouse::DEFAULT_PORT)]
        port: u16,
        /// Data directory [default: ./.data/clickhouse in the workspace].
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Clickhouse { port, data } => {
            let data = data.unwrap_or_else(|| clickhouse::default_data_dir(&root));
            clickhouse::run_foreground(&root, port, &data)
        }
    }
}
