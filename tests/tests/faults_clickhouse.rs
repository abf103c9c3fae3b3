//! ClickHouse faults that last, end to end with real nginx traffic and the dev server behind the fault proxy:
//! unreachable for minutes (connections held unanswered, then refused), every insert answered 30 s late, the
//! events table's schema changed underneath the running agent, and the spool's disk filling up before the spool's
//! own bound. Each checks that capture never waits on the sink (the NDJSON sink beside it gets every exchange, no
//! `queue_full` drop), that what is dropped is counted under its reason, and that once ClickHouse is back every
//! accepted (spooled) event is stored exactly once. The outage and slow cases are `#[ignore]`d (run by `cargo xtask
//! reliability`, each as a short and a long run; `OBSERVER_FAULTS_OUTAGE_SECS` / `OBSERVER_FAULTS_SLOW_SECS` set
//! the long ones); the schema and disk-full cases run in `cargo xtask test`.
use std::{collections::BTreeMap, process::Command, time::Duration, time::Instant};

use observer_tests::*;

const TEST: &str = "faults";

/// Seconds of the long outage (`OBSERVER_FAULTS_OUTAGE_SECS`, default 600).
fn outage_secs() -> u64 {
    std::env::var("OBSERVER_FAULTS_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

/// Seconds ClickHouse takes per insert in the long slow case (`OBSERVER_FAULTS_SLOW_SECS`, default 30).
fn slow_secs() -> u64 {
    std::env::var("OBSERVER_FAULTS_SLOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// The agent with the ClickHouse sink at `url` (and the harness's NDJSON sink), plus `extra`.
fn agent(dir: &std::path::Path, port: u16, url: &str, extra: &[&str]) -> Observer {
    let (port, spool) = (port.to_string(), dir.join("spool").display().to_string());
    let mut args = vec![
        "--ports",
        &port,
        "--sink",
        "clickhouse",
        "--clickhouse-url",
        url,
        "--spool-dir",
        &spool,
        "--batch-interval",
        "200ms",
        "--agent-id",
        "faults-ch",
    ];
    args.extend_from_slice(extra);
    Observer::start(dir, &args)
}

fn g(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

/// Records a passed case: `stored` (rows, distinct exchanges) in ClickHouse, the duplicates among them, and the
/// series `keys` of /metrics sample `m`.
fn record(
    case: String,
    checked: String,
    sent: u64,
    (rows, distinct): (u64, u64),
    m: &BTreeMap<String, f64>,
    keys: &[&str],
) {
    let mut r = CaseReport {
        case,
        checked,
        sent,
        stored: rows,
        ..CaseReport::default()
    };
    r.counted
        .insert("duplicates".into(), rows.saturating_sub(distinct) as f64);
    for k in keys {
        r.counted.insert(k.to_string(), g(m, k));
    }
    r.passed(TEST);
}

const QUEUE_FULL: &str = "observer_sink_dropped_total{reason=\"queue_full\"}";
const SPOOL_FULL: &str = "observer_sink_dropped_total{reason=\"spool_full\"}";
const DISK_FULL: &str = "observer_sink_dropped_total{reason=\"spool_disk_full\"}";

/// ClickHouse unreachable for `secs`: the first half every connection is held unanswered (the insert times out),
/// the second half the proxy is gone (connection refused); curl traffic throughout, a spool bounded at
/// `spool_max`. Then it heals.
fn unreachable_case(secs: u64, spool_max: &str, case: &str) {
    require_root();
    let dir = scratch("faults-unreachable");
    let (port, ch_port, proxy_port) = (18681, 18682, 18683);
    let ch = ClickHouse::start(&dir, ch_port);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));
    let (proxy, mode) = fault_proxy(&dir, proxy_port, ch_port);
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    let url = format!("http://127.0.0.1:{proxy_port}");
    let obs = agent(
        &dir,
        port,
        &url,
        &["--clickhouse-timeout", "2s", "--spool-max-bytes", spool_max],
    );
    let mut sent = send(port, "out", 10);
    wait_metric(
        &obs,
        "observer_sink_rows_sent_total",
        10.0,
        "healthy before",
    );
    std::fs::write(&mode, "blackhole").expect("mode");
    let mut proxy = Some(proxy);
    let started = Instant::now();
    let mut spool_max_seen = 0.0f64;
    while started.elapsed() < Duration::from_secs(secs) {
        if proxy.is_some() && started.elapsed() >= Duration::from_secs(secs / 2) {
            // Held connections are closed unanswered, then nothing listens at all.
            std::fs::write(&mode, "pass").expect("mode");
            drop(proxy.take());
        }
        sent += send(port, "out", 25);
        spool_max_seen = spool_max_seen.max(g(&obs.metrics_map(), "observer_sink_spool_bytes"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let m_out = obs.metrics_map();
    let (_proxy, _) = fault_proxy(&dir, proxy_port, ch_port);
    wait_spool_drained(&obs, Duration::from_secs(120));
    // Exchanges in flight at the heal reach ClickHouse through the (now empty) spool or directly.
    std::thread::sleep(Duration::from_secs(2));
    let m = obs.metrics_map();
    let log = obs.log();
    let events = on_port(&obs.stop(), port);
    let (rows, distinct) = stored(&ch, port, "out");
    let dropped = g(&m, SPOOL_FULL) as u64;
    let bound = observer_bytes(spool_max);
    assert_eq!(
        events.len() as u64,
        sent,
        "capture (NDJSON) has every exchange"
    );
    assert_eq!(
        g(&m, QUEUE_FULL),
        0.0,
        "capture never waited on the sink: {m:#?}"
    );
    assert_eq!(rows, distinct, "no exchange stored twice");
    assert_eq!(
        rows + dropped,
        sent,
        "stored + counted spool_full drops = sent: {m:#?}\n{log}"
    );
    assert!(
        spool_max_seen <= bound,
        "spool within its bound: {spool_max_seen} > {bound}"
    );
    assert!(
        g(
            &m_out,
            "observer_sink_insert_failures_total{reason=\"timeout\"}"
        ) > 0.0
            && g(
                &m_out,
                "observer_sink_insert_failures_total{reason=\"unreachable\"}"
            ) > 0.0,
        "both kinds of outage counted: {m_out:#?}"
    );
    record(
        case.into(),
        format!(
            "ClickHouse unreachable for {secs} s (first half connections held unanswered, insert timeout 2 s; second \
             half connection refused), curl traffic throughout, spool bounded at {spool_max}: NDJSON beside it has \
             every exchange and no queue_full drop (capture never waits on the sink); spool never above its bound \
             (max seen {spool_max_seen:.0} B); after the heal stored + counted spool_full drops = sent, no duplicate"
        ),
        sent,
        (rows, distinct),
        &m,
        &[
        SPOOL_FULL,
        QUEUE_FULL,
        "observer_sink_insert_failures_total{reason=\"timeout\"}",
        "observer_sink_insert_failures_total{reason=\"unreachable\"}",
        "observer_sink_spooled_rows_total",
        "observer_sink_replayed_rows_total",
    ],
    );
}

/// `4KiB`, `2MiB` as bytes.
fn observer_bytes(s: &str) -> f64 {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: f64 = n.parse().expect("size");
    n * match unit {
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        _ => 1.0,
    }
}

#[test]
#[ignore = "a short run of the slow case below (~45 s): run by cargo xtask reliability"]
fn clickhouse_unreachable_briefly_loses_nothing_beyond_counted_drops() {
    unreachable_case(16, "48KiB", "ClickHouse unreachable 16 s");
}

#[test]
#[ignore = "slow (10 minutes): run by cargo xtask reliability"]
fn clickhouse_unreachable_for_10_minutes_loses_nothing_beyond_counted_drops() {
    let secs = outage_secs();
    unreachable_case(
        secs,
        "1MiB",
        &format!("ClickHouse unreachable {} min", secs / 60),
    );
}

/// Every insert answered `delay` seconds late (the agent's insert timeout above it) while curl traffic flows for
/// `secs`.
fn slow_case(delay: u64, secs: u64) {
    require_root();
    let dir = scratch("faults-slow");
    let (port, ch_port, proxy_port) = (18686, 18687, 18688);
    let ch = ClickHouse::start(&dir, ch_port);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));
    let (_proxy, mode) = fault_proxy(&dir, proxy_port, ch_port);
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    let timeout = format!("{}s", delay * 2 + 5);
    let obs = agent(
        &dir,
        port,
        &format!("http://127.0.0.1:{proxy_port}"),
        &["--clickhouse-timeout", &timeout],
    );
    let rss_start = rss_mib(&obs);
    std::fs::write(&mode, format!("delay:{delay}")).expect("mode");
    let started = Instant::now();
    let (mut sent, mut rss_max) = (0, rss_start);
    while started.elapsed() < Duration::from_secs(secs) {
        sent += send(port, "slow", 50);
        rss_max = rss_max.max(rss_mib(&obs));
        std::thread::sleep(Duration::from_millis(250));
    }
    let m_slow = obs.metrics_map();
    std::fs::write(&mode, "pass").expect("mode");
    wait_metric_for(
        &obs,
        "observer_sink_rows_sent_total",
        sent as f64,
        "all rows acknowledged once ClickHouse is fast again",
        Duration::from_secs(delay * 4 + 60),
    );
    let m = obs.metrics_map();
    let events = on_port(&obs.stop(), port);
    let (rows, distinct) = stored(&ch, port, "slow");
    assert_eq!(
        events.len() as u64,
        sent,
        "capture (NDJSON) has every exchange"
    );
    assert_eq!(g(&m, QUEUE_FULL), 0.0, "capture never waited: {m:#?}");
    assert_eq!(
        (rows, distinct),
        (sent, sent),
        "every exchange stored once: {m:#?}"
    );
    assert!(
        g(&m_slow, "observer_sink_rows_sent_total") > 0.0,
        "inserts made progress while slow: {m_slow:#?}"
    );
    // The batcher holds at most a few batches (bounded by --batch-max-bytes) whatever ClickHouse's pace.
    assert!(
        rss_max - rss_start < 64.0,
        "memory bounded: RSS {rss_start:.1} -> max {rss_max:.1} MiB"
    );
    record(
        format!("ClickHouse answering {delay} s per insert"),
        format!(
            "every insert answered {delay} s late for {secs} s of curl traffic (insert timeout {timeout}): no \
             queue_full drop, NDJSON complete, inserts progress while slow (larger batches, not a growing spool), \
             every exchange stored once; agent RSS {rss_start:.1} MiB at start, max {rss_max:.1} MiB"
        ),
        sent,
        (rows, distinct),
        &m,
        &[
        "observer_sink_batches_sent_total",
        "observer_sink_spooled_rows_total",
        QUEUE_FULL,
    ],
    );
}

#[test]
#[ignore = "a short run of the slow case below (~45 s): run by cargo xtask reliability"]
fn slow_clickhouse_briefly_loses_and_duplicates_nothing() {
    slow_case(3, 12);
}

#[test]
#[ignore = "slow (several minutes): run by cargo xtask reliability"]
fn clickhouse_answering_30s_per_insert_loses_and_duplicates_nothing() {
    let d = slow_secs();
    slow_case(d, d * 6);
}

#[test]
fn schema_changed_underneath_keeps_batches_spooled_until_restored() {
    require_root();
    let dir = scratch("faults-schema");
    let (port, ch_port) = (18691, 18692);
    let ch = ClickHouse::start(&dir, ch_port);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    let obs = agent(&dir, port, &ch.url, &["--clickhouse-timeout", "5s"]);
    let schema_failures = "observer_sink_insert_failures_total{reason=\"schema\"}";
    let mut cases = vec![("before", send(port, "before", 20))];
    wait_metric(&obs, "observer_sink_rows_sent_total", 20.0, "healthy");
    // An operator drops a column, then (once restored) renames the table away.
    type Change<'a> = (&'a str, &'a str, &'a str, &'a str);
    let changes: [Change; 2] = [
        (
            "dropcol",
            "ALTER TABLE observer.http_requests DROP COLUMN user_agent",
            "ALTER TABLE observer.http_requests ADD COLUMN user_agent LowCardinality(String) AFTER server_cgroup",
            "user_agent",
        ),
        (
            "renamed",
            "RENAME TABLE observer.http_requests TO observer.http_requests_moved",
            "RENAME TABLE observer.http_requests_moved TO observer.http_requests",
            "http_requests",
        ),
    ];
    let mut failures_seen = 0.0;
    for (phase, break_it, restore, named) in changes {
        ch.query(break_it);
        let n = send(port, phase, 20);
        failures_seen += 1.0;
        wait_metric(
            &obs,
            schema_failures,
            failures_seen,
            "schema failure counted",
        );
        failures_seen = g(&obs.metrics_map(), schema_failures);
        let log = obs.log();
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains("observer.http_requests")
                && l.contains(named)),
            "a clear error naming the table and {named}:\n{log}"
        );
        // The failure is counted when the insert returns, the batch spooled just after (on a blocking thread).
        wait_metric(
            &obs,
            "observer_sink_spool_batches",
            1.0,
            "refused batches kept in the spool",
        );
        ch.query(restore);
        wait_spool_drained(&obs, Duration::from_secs(90));
        cases.push((phase, n));
    }
    cases.push(("after", send(port, "after", 20)));
    let total: u64 = cases.iter().map(|c| c.1).sum();
    wait_metric(
        &obs,
        "observer_sink_rows_sent_total",
        total as f64,
        "all stored",
    );
    std::thread::sleep(Duration::from_secs(1));
    let m = obs.metrics_map();
    let events = on_port(&obs.stop(), port);
    assert_eq!(events.len() as u64, total, "capture unaffected");
    for (phase, n) in &cases {
        let (rows, distinct) = stored(&ch, port, phase);
        assert_eq!(
            (rows, distinct),
            (*n, *n),
            "{phase}: stored once each: {m:#?}"
        );
    }
    let stored_all = cases
        .iter()
        .map(|(p, _)| stored(&ch, port, p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    record(
        "ClickHouse schema changed underneath".into(),
        "while the agent runs an operator drops a column of observer.http_requests, later renames the table \
         away: inserts refused, counted (insert_failures reason=schema), an ERROR naming the table and column, the \
         batches kept in the spool, the agent up; once the schema is restored the spool lands and every exchange \
         (before, during both changes, after) is stored exactly once"
            .into(),
        total,
        stored_all,
        &m,
        &[schema_failures, "observer_sink_replayed_rows_total"],
    );
}

#[test]
fn a_full_spool_disk_drops_counted_and_replays_the_rest_once() {
    require_root();
    let dir = scratch("faults-diskfull");
    let (port, ch_port, proxy_port) = (18696, 18697, 18698);
    let ch = ClickHouse::start(&dir, ch_port);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    // A 1 MiB file system under a spool bounded at 64 MiB; nothing listens where ClickHouse should be.
    let disk = SmallDisk::mount(&dir.join("spool"), "1m");
    let obs = agent(
        &dir,
        port,
        &format!("http://127.0.0.1:{proxy_port}"),
        &["--clickhouse-timeout", "2s", "--spool-max-bytes", "64MiB"],
    );
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while g(&obs.metrics_map(), DISK_FULL) == 0.0 && Instant::now() < deadline {
        sent += send(port, "full", 200);
    }
    sent += send(port, "full", 200);
    std::thread::sleep(Duration::from_secs(1));
    let m_full = obs.metrics_map();
    let leftovers: Vec<_> = std::fs::read_dir(&disk.0)
        .expect("spool")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no half-written file left: {leftovers:?}"
    );
    assert!(
        g(&m_full, DISK_FULL) > 0.0 && g(&m_full, SPOOL_FULL) == 0.0,
        "{m_full:#?}"
    );
    let log = obs.log();
    assert!(
        log.contains("No space left") || log.contains("no space left"),
        "{log}"
    );
    let (_proxy, _) = fault_proxy(&dir, proxy_port, ch_port);
    wait_spool_drained(&obs, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(1));
    let m = obs.metrics_map();
    let events = on_port(&obs.stop(), port);
    let (rows, distinct) = stored(&ch, port, "full");
    let dropped = g(&m, DISK_FULL) as u64;
    assert_eq!(events.len() as u64, sent, "capture unaffected");
    assert_eq!(rows, distinct, "none stored twice");
    assert_eq!(
        rows + dropped,
        sent,
        "stored + counted disk-full drops = sent: {m:#?}"
    );
    assert_eq!(
        rows as f64,
        g(&m, "observer_sink_spooled_rows_total"),
        "every fully written batch replayed: {m:#?}"
    );
    assert_eq!(
        g(&m, "observer_sink_quarantined_files_total"),
        0.0,
        "nothing torn replayed"
    );
    record(
        "spool disk full".into(),
        "spool on a 1 MiB tmpfs, its bound 64 MiB, ClickHouse refusing connections: writes fail with ENOSPC, \
         drops counted as spool_disk_full (not spool_full), no .tmp left behind, the agent up; once ClickHouse is \
         back every fully written batch is replayed once: stored = spooled, stored + drops = sent"
            .into(),
        sent,
        (rows, distinct),
        &m,
        &[
        DISK_FULL,
        SPOOL_FULL,
        "observer_sink_spooled_rows_total",
        "observer_sink_quarantined_files_total",
    ],
    );
}
