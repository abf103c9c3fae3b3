//! The one shape of traffic the UI's pages are computed from: [`Cell`]s, counts of exchanges grouped by time bucket
//! and by the dimensions a page asks for ([`Dims`]), with a latency histogram ([`Hist`]) that merges by addition.
//!
//! Both data sources answer a [`CellQuery`] with cells (ClickHouse with one `GROUP BY`, the in-memory store by
//! re-grouping its per-minute cells), so every page is computed once, in `pages`, from the same input.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Histogram buckets per doubling of the duration: a quantile read from it is within about 9% of the true value.
pub const HIST_STEPS_PER_OCTAVE: f64 = 4.0;

/// Exchange durations (µs) in logarithmic buckets: bucket `b` holds durations in `[2^(b/4), 2^((b+1)/4))`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hist(pub BTreeMap<u16, u64>);

impl Hist {
    pub fn bucket(duration_us: u64) -> u16 {
        ((duration_us.max(1) as f64).log2() * HIST_STEPS_PER_OCTAVE).floor() as u16
    }

    pub fn add(&mut self, duration_us: u64) {
        *self.0.entry(Self::bucket(duration_us)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Hist) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `q` quantile (0..=1) in milliseconds: the geometric middle of the bucket holding it; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &self.0 {
            seen += n;
            if seen >= rank {
                let us = 2f64.powf((*b as f64 + 0.5) / HIST_STEPS_PER_OCTAVE);
                return (us / 10.0).round() / 100.0;
            }
        }
        0.0
    }
}

/// Which dimensions a query keeps; the others come back empty (and their cells merged). The API and the time
/// bucket are always kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dims {
    /// `route` and `method`.
    pub route: bool,
    /// `app_id`, its names, and `attributed_by`.
    pub app: bool,
    /// `key_fingerprint`, `key_suffix`, `key_state`.
    pub key: bool,
    /// The exact `status` (else 0; `errors` still counts the errors).
    pub status: bool,
    /// The client workload: `src_ip`, `client_cgroup`, `client_comm`.
    pub workload: bool,
}

impl Dims {
    pub const NONE: Dims = Dims {
        route: false,
        app: false,
        key: false,
        status: false,
        workload: false,
    };
    pub const ROUTE: Dims = Dims {
        route: true,
        ..Dims::NONE
    };
    pub const APP: Dims = Dims {
        app: true,
        ..Dims::NONE
    };
    pub const KEY: Dims = Dims {
        key: true,
        ..Dims::NONE
    };
    pub const STATUS: Dims = Dims {
        status: true,
        ..Dims::NONE
    };
    pub const WORKLOAD: Dims = Dims {
        workload: true,
        ..Dims::NONE
    };

    /// The dimensions of both.
    pub const fn and(self, o: Dims) -> Dims {
        Dims {
            route: self.route || o.route,
            app: self.app || o.app,
            key: self.key || o.key,
            status: self.status || o.status,
            workload: self.workload || o.workload,
        }
    }
}

/// Which exchanges a query counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub api_id: Option<String>,
    /// Any of these applications.
    pub app_ids: Option<Vec<String>>,
    /// Only exchanges that presented a key.
    pub with_key: bool,
    /// Only exchanges no application claims.
    pub unattributed: bool,
}

impl Filter {
    /// Exchanges of one API.
    pub fn api(id: &str) -> Filter {
        Filter {
            api_id: Some(id.to_string()),
            ..Filter::default()
        }
    }

    /// Exchanges of any of these applications.
    pub fn apps(ids: Vec<String>) -> Filter {
        Filter {
            app_ids: Some(ids),
            ..Filter::default()
        }
    }

    /// Exchanges that presented a key.
    pub fn keyed() -> Filter {
        Filter {
            with_key: true,
            ..Filter::default()
        }
    }

    /// Exchanges no application claims.
    pub fn unattributed() -> Filter {
        Filter {
            unattributed: true,
            ..Filter::default()
        }
    }

    pub fn matches(&self, c: &Cell) -> bool {
        self.api_id.as_ref().is_none_or(|a| *a == c.api_id)
            && self
                .app_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&c.app_id))
            && (!self.with_key || !c.key_fingerprint.is_empty())
            && (!self.unattributed || c.attributed_by == "none")
    }
}

/// Cells of `[from, to)` (Unix seconds) in buckets of `step` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellQuery {
    pub from: i64,
    pub to: i64,
    pub step: i64,
    pub filter: Filter,
    pub dims: Dims,
}

/// Exchanges of one time bucket sharing every kept dimension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cell {
    /// Start of the bucket, Unix seconds.
    pub t: i64,
    pub api_id: String,
    pub api_name: String,
    pub host: String,
    pub route: String,
    pub method: String,
    pub app_id: String,
    pub app_name: String,
    pub app_team: String,
    pub line_of_business: String,
    pub attributed_by: String,
    pub key_fingerprint: String,
    pub key_suffix: String,
    pub key_state: String,
    pub status: u16,
    pub src_ip: String,
    pub client_cgroup: String,
    pub client_comm: String,
    pub requests: u64,
    /// Answered 5xx or not at all (status 0).
    pub errors: u64,
    /// First and last exchange in the cell, Unix seconds.
    pub first_ts: f64,
    pub last_ts: f64,
    pub hist: Hist,
}

impl Cell {
    /// A display name for the API: its registry name, else the Host it was called on.
    pub fn api_label(&self) -> String {
        label(&self.api_name, &self.api_id, &self.host, "(no API)")
    }

    /// A display name for the application, `(unattributed)` when no application claims the call.
    pub fn app_label(&self) -> String {
        label(&self.app_name, &self.app_id, "", "(unattributed)")
    }

    /// The workload as one string: process, cgroup and source IP.
    pub fn workload(&self) -> String {
        format!(
            "{} {} {}",
            self.client_comm, self.client_cgroup, self.src_ip
        )
    }

    /// Keeps only the dimensions of `dims` (and the time bucket re-based to `step` from `from`).
    pub fn project(&mut self, dims: Dims, from: i64, step: i64) {
        self.t = from + (self.t - from).div_euclid(step.max(1)) * step.max(1);
        // A registered API is one API whatever Host it was called on (as ClickHouse groups it).
        if !self.api_id.is_empty() {
            self.host.clear();
        }
        if !dims.route {
            self.route.clear();
            self.method.clear();
        }
        if !dims.app {
            for s in [
                &mut self.app_id,
                &mut self.app_name,
                &mut self.app_team,
                &mut self.line_of_business,
                &mut self.attributed_by,
            ] {
                s.clear();
            }
        }
        if !dims.key {
            self.key_fingerprint.clear();
            self.key_suffix.clear();
            self.key_state.clear();
        }
        if !dims.status {
            self.status = 0;
        }
        if !dims.workload {
            self.src_ip.clear();
            self.client_cgroup.clear();
            self.client_comm.clear();
        }
    }

    /// The dimensions as one key: cells with equal keys merge.
    fn key(&self) -> (i64, [&str; 12], u16) {
        (
            self.t,
            [
                &self.api_id,
                &self.host,
                &self.route,
                &self.method,
                &self.app_id,
                &self.attributed_by,
                &self.key_fingerprint,
                &self.key_state,
                &self.src_ip,
                &self.client_cgroup,
                &self.client_comm,
                &self.key_suffix,
            ],
            self.status,
        )
    }

    pub fn merge(&mut self, o: &Cell) {
        if self.requests == 0 {
            self.first_ts = o.first_ts;
        } else if o.requests > 0 {
            self.first_ts = self.first_ts.min(o.first_ts);
        }
        self.last_ts = self.last_ts.max(o.last_ts);
        self.requests += o.requests;
        self.errors += o.errors;
        self.hist.merge(&o.hist);
        for (mine, theirs) in [
            (&mut self.api_name, &o.api_name),
            (&mut self.app_name, &o.app_name),
            (&mut self.app_team, &o.app_team),
            (&mut self.line_of_business, &o.line_of_business),
        ] {
            if mine.is_empty() {
                mine.clone_from(theirs);
            }
        }
    }
}

fn label(name: &str, id: &str, fallback: &str, none: &str) -> String {
    [name, id, fallback]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or(none)
        .to_string()
}

/// Merges cells with equal dimensions (after [`Cell::project`]); sorted by time, then dimensions.
pub fn regroup(cells: impl IntoIterator<Item = Cell>) -> Vec<Cell> {
    let mut out: Vec<Cell> = cells.into_iter().collect();
    out.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut merged: Vec<Cell> = Vec::with_capacity(out.len());
    for c in out {
        match merged.last_mut() {
            Some(last) if last.key() == c.key() => last.merge(&c),
            _ => merged.push(c),
        }
    }
    merged
}

/// Bucket starts of a query's range.
pub fn buckets(from: i64, to: i64, step: i64) -> Vec<i64> {
    let step = step.max(1);
    (0..)
        .map(|i| from + i * step)
        .take_while(|t| *t < to)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(t: i64, app: &str, n: u64, dur: u64) -> Cell {
        let mut h = Hist::default();
        for _ in 0..n {
            h.add(dur);
        }
        Cell {
            t,
            api_id: "pay".into(),
            app_id: app.into(),
            route: "/x".into(),
            requests: n,
            first_ts: t as f64,
            last_ts: t as f64 + 1.0,
            hist: h,
            ..Cell::default()
        }
    }

    #[test]
    fn hist_quantiles_are_within_a_bucket() {
        let mut h = Hist::default();
        for d in 1..=1000u64 {
            h.add(d * 100); // 0.1 ms .. 100 ms, uniform
        }
        let p50 = h.quantile_ms(0.5);
        let p95 = h.quantile_ms(0.95);
        assert!((p50 - 50.0).abs() / 50.0 < 0.1, "p50 {p50}");
        assert!((p95 - 95.0).abs() / 95.0 < 0.1, "p95 {p95}");
        assert_eq!(Hist::default().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn regroup_merges_projected_dimensions() {
        let mut cells = vec![
            cell(60, "shop", 3, 1000),
            cell(120, "shop", 2, 4000),
            cell(60, "billing", 5, 1000),
        ];
        cells[1].first_ts = 125.0;
        cells[1].last_ts = 126.0;
        for c in &mut cells {
            c.project(
                Dims {
                    app: true,
                    ..Dims::default()
                },
                0,
                300,
            );
        }
        let out = regroup(cells);
        assert_eq!(out.len(), 2);
        let shop = out.iter().find(|c| c.app_id == "shop").unwrap();
        assert_eq!((shop.t, shop.requests, shop.hist.count()), (0, 5, 5));
        assert_eq!((shop.first_ts, shop.last_ts), (60.0, 126.0));
        assert_eq!(shop.route, "", "route not kept");
        assert_eq!(buckets(0, 900, 300), vec![0, 300, 600]);
    }
}
