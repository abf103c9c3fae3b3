//! Origin across nodes: `observer origin join`, the periodic job that fills the origin of exchanges whose parent
//! ran on another node, in ClickHouse, by the keyed trace and request id hashes every event carries.
//!
//! Each node decides origins from what it sees ([`crate::origin`]); a call arriving from another node is `self`
//! there (hop 0, its own workload or nothing). One pass of [`join_sql`] over a time window writes to
//! `origin_fleet` (read through the `http_requests_origin` view):
//! - roots: an exchange at hop 0 without a key of its own and without a keyed origin, whose trace id (else request
//!   id) hash equals that of an exchange with a keyed origin in flight when it started (± the clock skew
//!   allowance): the other node's client side of the same exchange (a `client` event with the same
//!   `request_hash`, the same hop and parent), else the deepest such exchange (its parent, one hop below it);
//! - children: an exchange without a keyed origin whose parent (`parent_conn_id`, `parent_ts`) has one now: the
//!   parent's origin, one hop below it.
//!
//! A chain crossing nodes needs one pass per level below the crossing: [`join_window`] repeats passes until one adds
//! nothing (at most [`MAX_PASSES`]). Values are never read, only the hashes.
use std::time::Duration;

use crate::event::Timestamp;
use crate::sink::clickhouse::schema::{check_identifier, ConnectArgs, SchemaError};

/// Passes per run: the deepest chain below a node crossing that one run completes.
pub const MAX_PASSES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FleetJoinError {
    #[error("observer origin join needs --clickhouse-url (or CLICKHOUSE_URL)")]
    NoUrl,
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("ClickHouse: {what}: {source}")]
    ClickHouse {
        what: &'static str,
        source: clickhouse::error::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

#[derive(Debug, clap::Args)]
pub struct OriginCommand {
    #[command(subcommand)]
    pub action: OriginAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum OriginAction {
    /// Fill the origin of exchanges whose parent ran on another node (table origin_fleet, view
    /// http_requests_origin), every --interval over the last --lookback.
    Join(JoinArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Database holding observer's tables.
    #[arg(long, env = "CLICKHOUSE_DATABASE", default_value = "observer")]
    pub database: String,
    /// Run once over the window and exit.
    #[arg(long)]
    pub once: bool,
    /// How often the window is joined.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub interval: Duration,
    /// How far back each run looks (exchanges stored later than this behind their parent stay unjoined).
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub lookback: Duration,
    /// Exchanges younger than this are left for the next run: a node holds an exchange until its parent is
    /// decided (up to 10 s) and batches its inserts.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub lag: Duration,
    /// Clock difference allowed between nodes when matching a call with the exchange it was made for.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub skew: Duration,
}

pub fn run(cmd: OriginCommand) -> Result<(), FleetJoinError> {
    let OriginAction::Join(args) = cmd.action;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FleetJoinError::Runtime)?;
    rt.block_on(join_loop(&args))
}

async fn join_loop(args: &JoinArgs) -> Result<(), FleetJoinError> {
    if args
        .connect
        .clickhouse_url
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Err(FleetJoinError::NoUrl);
    }
    check_identifier("database name", &args.database)?;
    let client = args.connect.client()?.with_database(&args.database);
    loop {
        let now = Timestamp::now().0;
        let to = now - args.lag.as_micros() as i64;
        let from = to - args.lookback.as_micros() as i64;
        match join_window(&client, from, to, args.skew.as_micros() as i64).await {
            Ok(j) => tracing::info!(filled = j.filled, passes = j.passes, "origin join"),
            Err(e) if !args.once => {
                tracing::warn!(error = %e, "origin join failed; retrying next interval")
            }
            Err(e) => return Err(e),
        }
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// Exchanges given an origin.
    pub filled: u64,
    /// Passes run (the last added nothing, unless [`MAX_PASSES`] were needed).
    pub passes: usize,
}

/// Joins exchanges that started in `[from_us, to_us)` (Unix µs) until a pass adds nothing; `client` carries the
/// database.
pub async fn join_window(
    client: &clickhouse::Client,
    from_us: i64,
    to_us: i64,
    skew_us: i64,
) -> Result<Joined, FleetJoinError> {
    let count = || async {
        client
            .query(&format!(
                "SELECT count() FROM origin_fleet WHERE ts >= {} AND ts < {}",
                dt(from_us),
                dt(to_us)
            ))
            .fetch_one::<u64>()
            .await
            .map_err(|source| FleetJoinError::ClickHouse {
                what: "counting origin_fleet",
                source,
            })
    };
    let start = count().await?;
    let mut last = start;
    let mut passes = 0;
    while passes < MAX_PASSES {
        passes += 1;
        client
            .query(&join_sql(from_us, to_us, skew_us))
            .execute()
            .await
            .map_err(|source| FleetJoinError::ClickHouse {
                what: "origin join pass",
                source,
            })?;
        let n = count().await?;
        if n == last {
            break;
        }
        last = n;
    }
    Ok(Joined {
        filled: last - start,
        passes,
    })
}

fn dt(us: i64) -> String {
    format!("fromUnixTimestamp64Micro(toInt64({us}), 'UTC')")
}

/// One pass over exchanges that started in `[from_us, to_us)`: the roots, then the children of exchanges that have
/// a keyed origin (see the module documentation). Candidates are exchanges without a keyed origin, so a pass never
/// refills what an earlier one filled. Parents are looked for up to an hour before the window.
pub fn join_sql(from_us: i64, to_us: i64, skew_us: i64) -> String {
    let (from, to) = (dt(from_us), dt(to_us));
    let before = dt(from_us - 3_600_000_000 - skew_us);
    // The hashes' low bits only: agents before 56-bit hashes stored 64 (see `enrich::PROPAGATED_ID_BITS`).
    let m = crate::enrich::PROPAGATED_ID_MASK;
    let ids = format!(
        "[(toUInt8(2), bitAnd(trace_id_hash, {m})), (toUInt8(3), bitAnd(request_id_hash, {m}))]"
    );
    let same = "d.side = 'client' AND c.side = 'server' AND c.request_hash != 0 \
                AND d.request_hash = c.request_hash";
    let cols = crate::sink::clickhouse::migrations::ORIGIN_COLUMNS.join(", ");
    format!(
        "INSERT INTO origin_fleet (conn_id, ts, {cols})\n\
         SELECT conn_id, ts, o.1, o.2, o.3, o.4, o.5, o.6, o.7 FROM (\n\
         SELECT c.conn_id AS conn_id, c.ts AS ts, argMax(if({same}, \
         (d.origin_app_id, d.origin_key_fingerprint, d.origin_api_id, d.parent_conn_id, d.parent_ts, d.hop, c.kind), \
         (d.origin_app_id, d.origin_key_fingerprint, d.origin_api_id, d.conn_id, d.ts, d.hop + 1, c.kind)), \
         (3 - c.kind, {same}, d.hop, d.ts)) AS o\n\
         FROM (SELECT conn_id, ts, side, request_hash, k.1 AS kind, k.2 AS id FROM http_requests_origin \
         ARRAY JOIN {ids} AS k WHERE ts >= {from} AND ts < {to} AND k.2 != 0 AND hop = 0 \
         AND key_fingerprint = '' AND origin_key_fingerprint = '' AND origin_by IN ('self', 'none')) AS c\n\
         INNER JOIN (SELECT conn_id, ts, side, request_hash, duration_us, origin_app_id, origin_key_fingerprint, \
         origin_api_id, parent_conn_id, parent_ts, hop, k.1 AS kind, k.2 AS id FROM http_requests_origin \
         ARRAY JOIN {ids} AS k WHERE ts >= {before} AND ts < {to} AND k.2 != 0 AND origin_key_fingerprint != '') AS d \
         ON d.kind = c.kind AND d.id = c.id\n\
         WHERE (d.conn_id, d.ts) != (c.conn_id, c.ts) AND d.ts <= c.ts + toIntervalMicrosecond({skew_us}) \
         AND c.ts <= d.ts + toIntervalMicrosecond(d.duration_us + {skew_us})\n\
         GROUP BY conn_id, ts)\n\
         UNION ALL\n\
         SELECT c.conn_id, c.ts, p.origin_app_id, p.origin_key_fingerprint, p.origin_api_id, c.parent_conn_id, \
         c.parent_ts, p.hop + 1, c.origin_by FROM http_requests_origin AS c\n\
         INNER JOIN (SELECT conn_id, ts, origin_app_id, origin_key_fingerprint, origin_api_id, hop \
         FROM http_requests_origin WHERE ts >= {before} AND ts < {to} AND origin_key_fingerprint != '') AS p \
         ON p.conn_id = c.parent_conn_id AND p.ts = c.parent_ts\n\
         WHERE c.ts >= {from} AND c.ts < {to} AND c.parent_conn_id != 0 AND c.origin_key_fingerprint = ''"
    )
}
