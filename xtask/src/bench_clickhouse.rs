//! `cargo xtask bench --clickhouse`: the ClickHouse figures of BENCHMARKS.md (issue 17 item 7), measured on the dev
//! server (chdb, ClickHouse 26.9 in-process): rows per second through the agent's own sink (the ignored test
//! `bench_sink_insert_rate` in observer/tests/clickhouse.rs, release build), and the dashboards' rollup panels' query
//! time over a 30-day range of generated rows (xtask/clickhouse/rollup_bench.py). Writes its own section; the data
//! is deleted at the end.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::benchmarks_md::{provenance, write_sections};
use crate::toolchain::say;

const HEADING: &str = "## ClickHouse: insert rate through the sink and rollup query time";

/// Bytes of disk the rollup benchmark may take per generated row (raw row, rollups, parts before merges), measured
/// at 85 B/row on a sparse 30 days; twice that as the margin required free.
const DISK_PER_ROW: u64 = 170;

pub fn run(root: &Path, bin: &Path, rows: u64, insert_rows: u64) -> Result<()> {
    let started = Instant::now();
    let py = crate::clickhouse::ensure_venv(root)?;
    let devserver = root.join("xtask/clickhouse/devserver.py");
    let scratch = std::env::temp_dir().join(format!("observer-bench-ch-{}", std::process::id()));
    let free = free_bytes(&std::env::temp_dir())?;
    if free < rows * DISK_PER_ROW {
        bail!(
            "{} has {} MB free; {rows} generated rows need about {} MB: pass a smaller --clickhouse-rows",
            std::env::temp_dir().display(),
            free >> 20,
            (rows * DISK_PER_ROW) >> 20
        );
    }

    say(format!(
        "inserting {insert_rows} rows through the ClickHouse sink (release test build)"
    ));
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "observer",
            "--test",
            "clickhouse",
            "--",
            "--ignored",
            "--exact",
            "bench_sink_insert_rate",
            "--nocapture",
        ])
        .env("OBSERVER_BENCH_ROWS", insert_rows.to_string())
        .env("OBSERVER_CLICKHOUSE_PYTHON", &py)
        .env("OBSERVER_CLICKHOUSE_DEVSERVER", &devserver)
        .env("OBSERVER_REQUIRE_CLICKHOUSE", "1")
        .output()
        .context("running the sink insert benchmark")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the sink insert benchmark failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("clickhouse_insert "))
        .context("the sink insert benchmark printed no clickhouse_insert line")?;
    let field = |k: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .with_context(|| format!("no {k} in {line:?}"))?
            .parse()
            .with_context(|| format!("{k} in {line:?}"))
    };
    let (secs, rate, batches, cpu) = (
        field("seconds")?,
        field("rows_per_s")?,
        field("batches")?,
        field("process_cpu_s")?,
    );

    say(format!(
        "generating {rows} rows over 30 days in ClickHouse and timing the rollup panels"
    ));
    let out = Command::new(&py)
        .arg(root.join("xtask/clickhouse/rollup_bench.py"))
        .arg("--observer")
        .arg(bin)
        .arg("--data")
        .arg(&scratch)
        .arg("--dashboards")
        .arg(root.join("dashboards"))
        .args(["--rows", &rows.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running xtask/clickhouse/rollup_bench.py")?;
    let _ = std::fs::remove_dir_all(&scratch);
    if !out.status.success() {
        bail!(
            "rollup_bench.py failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let r: Value = serde_json::from_slice(&out.stdout).context("rollup_bench.py's JSON")?;

    let mut s = format!(
        "{HEADING}\n\n{}\n\n",
        provenance(
            root,
            &format!(
                "cargo xtask bench --clickhouse --clickhouse-rows {rows} --clickhouse-insert-rows {insert_rows}"
            )
        )
    );
    s += "The ClickHouse server is the dev server: **chdb, the ClickHouse 26.9 engine in-process** behind a Python \
          HTTP front end (xtask/clickhouse/devserver.py), on the same 2 vCPUs as the client; a ClickHouse server on \
          its own cores will differ.\n\n";
    s += &format!(
        "**Insert rate through the agent's sink**: {insert_rows} rows of the realistic generator \
         (`bench_sink_insert_rate` in observer/tests/clickhouse.rs, release build) through `sink::build_clickhouse` at \
         its defaults (100,000 rows or 1 s a batch, RowBinary, LZ4, HTTP inserts, the spool's bookkeeping), the sender \
         never more than the 300,000-event queue ahead of ClickHouse's acknowledgements: **{rate:.0} rows/s** \
         ({secs:.1} s, {batches:.0} batches; the sending process used {cpu:.1} s of CPU, {:.2} µs per row, cloning \
         events included; the server's CPU is not in it).\n\n",
        cpu * 1e6 / insert_rows as f64
    );
    let tables = r["tables"].as_array().cloned().unwrap_or_default();
    let table_desc: Vec<String> = tables
        .iter()
        .filter_map(|t| {
            let t = t.as_array()?;
            Some(format!(
                "`{}` {} rows, {:.0} MB",
                t[0].as_str()?,
                t[1].as_u64()?,
                t[2].as_u64()? as f64 / 1e6
            ))
        })
        .collect();
    s += &format!(
        "**Rollup panels over 30 days**: {rows} rows generated in ClickHouse (`INSERT ... SELECT` from `numbers()`, \
         the SQL twin of the bytes-per-row generator, seed {seed}, evenly spread over the last 30 days, the \
         materialized views filling the rollups) in {gen} s, rollups merged (`OPTIMIZE ... FINAL`) in {opt} s; \
         then {tables}. Every dashboard panel target reading the rollups through `http_requests_rollup` \
         (migration 16; xtask/clickhouse/rollup_bench.py), its variables at \"All\" (a single-select one at its first \
         option), time range now-30d..now, `$__interval_s` = {iv}, run twice: as the dashboard has it (the view \
         takes the range's whole hours from `http_requests_1h` and the minutes of the two partial hours from \
         `http_requests_1m`) and at a one-minute resolution (`step_s = 60`: the minute rollup alone, what every panel \
         read before the view). Rows read = rows ClickHouse read from storage (whole granules); cold = right after \
         `SYSTEM DROP` of the mark, uncompressed, query and page caches (the kernel's page cache is not dropped), \
         warm = median of 3 more runs; same = both runs returned the same rows:\n\n",
        seed = r["seed"],
        gen = r["generate_s"],
        opt = r["optimize_s"],
        tables = table_desc.join(", "),
        iv = r["interval_s"],
    );
    s += "| dashboard | panel | target | result rows | 1m alone: rows read | cold ms | warm ms | view: rows read \
          | cold ms | warm ms | same |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    let (mut warm_1m, mut warm_view, mut read_1m, mut read_view) = (0.0, 0.0, 0, 0);
    for p in r["panels"].as_array().into_iter().flatten() {
        let (m, v) = (&p["minute"], &p["view"]);
        warm_1m += m["warm_ms"].as_f64().unwrap_or_default();
        warm_view += v["warm_ms"].as_f64().unwrap_or_default();
        read_1m += m["read_rows"].as_u64().unwrap_or_default();
        read_view += v["read_rows"].as_u64().unwrap_or_default();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p["dashboard"].as_str().unwrap_or_default(),
            p["panel"].as_str().unwrap_or_default(),
            p["ref"].as_str().unwrap_or_default(),
            p["rows"],
            m["read_rows"],
            m["cold_ms"],
            m["warm_ms"],
            v["read_rows"],
            v["cold_ms"],
            v["warm_ms"],
            if p["same"] == true { "yes" } else { "no" },
        );
    }
    s += &format!(
        "\nAll targets together, warm: **{warm_view:.0} ms through the view against {warm_1m:.0} ms from the minute \
         rollup alone** ({:.1}x), {read_view} rows read against {read_1m} ({:.1}x fewer).\n",
        warm_1m / warm_view.max(1e-9),
        read_1m as f64 / (read_view.max(1)) as f64
    );
    s += &format!(
        "\nThe whole command took {:.0} s; its data directory was deleted at the end.\n",
        started.elapsed().as_secs_f64()
    );
    write_sections(root, &[s])?;
    say("BENCHMARKS.md: wrote the ClickHouse section");
    Ok(())
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("parsing df's output")
}
