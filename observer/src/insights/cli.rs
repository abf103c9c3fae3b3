//! `observer insights ...`: `replay` (the findings a stream of NDJSON events would have raised), `scenarios`
//! (generate labelled synthetic traffic, score the detectors on it, optionally write it out), `run` (the fleet-wide
//! runner over ClickHouse, [`super::fleet`]) and `list` (findings from ClickHouse, [`super::list`]).
use std::io::{BufReader, Write};
use std::path::PathBuf;

use super::scenarios::{self, eval};
use super::{Config, Engine, Finding};
use crate::registry::{load_file, KeySecret};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Secret(#[from] crate::registry::SecretError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} line(s) of {1} could not be read (see above); the findings cover the others")]
    BadLines(u64, PathBuf),
    #[error("invalid seed range {0:?} (examples: 1..5, 7, 1,2,9)")]
    Seeds(String),
    #[error(transparent)]
    Fleet(#[from] super::fleet::FleetError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

#[derive(Debug, clap::Args)]
pub struct InsightsCommand {
    #[command(subcommand)]
    pub action: InsightsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum InsightsAction {
    /// Fleet-wide: read what every node stored in ClickHouse (from a watermark, in time order), run the detectors
    /// on it and write the findings to the `insights` table (source `fleet`).
    Run(super::fleet::RunArgs),
    /// Print the newest version of each finding from ClickHouse, newest first.
    List(super::list::ListArgs),
    /// Print the findings a file of events (the NDJSON sink's format, any version, in time order) would have
    /// raised: each finding's versions as it opens, updates and closes.
    Replay {
        /// Registry the events were enriched with (YAML).
        #[arg(long, value_name = "FILE")]
        registry: PathBuf,
        /// Events, one JSON object per line.
        #[arg(long, value_name = "FILE.ndjson")]
        events: PathBuf,
        /// Thresholds (TOML; defaults: examples/insights.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// One JSON object per finding version instead of text.
        #[arg(long)]
        json: bool,
        /// Secret the registry's `key_env`/`key_file` keys are fingerprinted with (only needed for those).
        #[arg(long, value_name = "PATH")]
        key_secret_file: Option<PathBuf>,
    },
    /// Generate labelled synthetic traffic (seasonal baseline, scenarios, decoys), run the detectors on it and
    /// print precision, recall and time to detect per seed and per scenario (markdown).
    Scenarios {
        /// Seeds, e.g. `1..5` (inclusive), `7` or `1,2,9`.
        #[arg(long, default_value = "1..5")]
        seeds: String,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also write DIR/seed-N/{registry.yaml,events.ndjson,labels.json} for `insights replay`.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
        /// Title of the report's section.
        #[arg(long, default_value = "Scenarios")]
        title: String,
    },
}

fn load_config(path: &Option<PathBuf>) -> Result<Config, CliError> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// Writes one finding version as text or JSON.
pub fn print_finding(f: &Finding, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, f)?;
        writeln!(out)
    } else {
        writeln!(
            out,
            "{} {:8} {:28} {:6} v{} {}{}{}: {}",
            f.detected_at.to_rfc3339(),
            f.severity.as_str(),
            f.kind.as_str(),
            format!("{:?}", f.status).to_lowercase(),
            f.version,
            f.api_id,
            if f.app_id.is_empty() { "" } else { " / " },
            f.app_id,
            f.explanation
        )
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

pub fn run(cmd: InsightsCommand) -> Result<(), CliError> {
    match cmd.action {
        InsightsAction::Run(args) => Ok(runtime()?.block_on(super::fleet::run(args))?),
        InsightsAction::List(args) => {
            let rows = runtime()?.block_on(super::list::fetch(&args))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            super::list::print(&rows, args.json, &mut out)
                .and_then(|()| out.flush())
                .map_err(|source| CliError::Io {
                    path: "stdout".into(),
                    source,
                })
        }
        InsightsAction::Replay {
            registry,
            events,
            config,
            json,
            key_secret_file,
        } => replay(&registry, &events, &config, json, key_secret_file),
        InsightsAction::Scenarios {
            seeds,
            config,
            write,
            title,
        } => {
            let cfg = load_config(&config)?;
            let seeds = parse_seeds(&seeds)?;
            if let Some(dir) = write {
                for &seed in &seeds {
                    write_scenario(&dir, seed)?;
                }
            }
            let scores: Vec<_> = seeds.iter().map(|&s| eval::run_seed(s, &cfg)).collect();
            print!("{}", eval::report(&title, &scores));
            Ok(())
        }
    }
}

fn replay(
    registry: &std::path::Path,
    events: &std::path::Path,
    config: &Option<PathBuf>,
    json: bool,
    key_secret_file: Option<PathBuf>,
) -> Result<(), CliError> {
    let cfg = load_config(config)?;
    let secret = match key_secret_file {
        Some(p) => KeySecret::load_or_create(&p)?,
        None => KeySecret::from_bytes(b"observer insights replay"),
    };
    let reg = load_file(registry, &secret)?.registry;
    let io = |source| CliError::Io {
        path: events.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(events).map_err(io)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let mut engine = Engine::new(cfg, reg);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let count = super::decode::replay(
        &mut engine,
        reader,
        |n, e| tracing::warn!("{}:{n}: skipped: {e}", events.display()),
        |f| print_finding(f, json, &mut out),
    )
    .map_err(io)?;
    out.flush().map_err(io)?;
    let bad = count.bad;
    if bad > 0 {
        return Err(CliError::BadLines(bad, events.to_path_buf()));
    }
    Ok(())
}

fn parse_seeds(s: &str) -> Result<Vec<u64>, CliError> {
    let bad = || CliError::Seeds(s.to_string());
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if b < a {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    s.split(',')
        .map(|x| x.trim().parse().map_err(|_| bad()))
        .collect()
}

/// DIR/seed-N/registry.yaml, events.ndjson (the NDJSON sink's format) and labels.json.
fn write_scenario(dir: &std::path::Path, seed: u64) -> Result<(), CliError> {
    let d = dir.join(format!("seed-{seed}"));
    let io = |path: PathBuf| move |source| CliError::Io { path, source };
    std::fs::create_dir_all(&d).map_err(io(d.clone()))?;
    let mut g = scenarios::Generated::new(seed);
    std::fs::write(d.join("registry.yaml"), &g.registry_yaml)
        .map_err(io(d.join("registry.yaml")))?;
    let labels = serde_json::to_vec_pretty(&g.labels).expect("labels serialize");
    std::fs::write(d.join("labels.json"), labels).map_err(io(d.join("labels.json")))?;
    let path = d.join("events.ndjson");
    let f = std::fs::File::create(&path).map_err(io(path.clone()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut buf = Vec::new();
    let mut err = None;
    g.for_each_event(|e| {
        buf.clear();
        crate::sink::ndjson::write_event(e, &mut buf);
        buf.push(b'\n');
        if err.is_none() {
            err = w.write_all(&buf).err();
        }
    });
    if let Some(e) = err {
        return Err(io(path)(e));
    }
    w.flush().map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse() {
        assert_eq!(parse_seeds("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("7").unwrap(), vec![7]);
        assert_eq!(parse_seeds("1, 9").unwrap(), vec![1, 9]);
        assert!(parse_seeds("3..1").is_err());
        assert!(parse_seeds("x")
            .unwrap_err()
            .to_string()
            .contains("invalid seed range"));
    }
}
