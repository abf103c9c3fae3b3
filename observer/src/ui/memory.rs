//! The UI's data without ClickHouse: recent aggregates the agent's events feed, kept for the last hour.
//!
//! Each 10-second bucket holds one [`Cell`] per distinct (API, host, route, method, application, key, key state,
//! status, workload), so memory grows with the variety of traffic, not its volume; buckets older than the
//! retention are dropped as newer events arrive. The last exchanges and findings are kept in bounded rings.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::event::{Event, Timestamp};
use crate::insights::Finding;
use crate::sink::clickhouse::insights_rows::{subject, title};

use super::cells::{regroup, Cell, CellQuery, Hist};
use super::model::{latest, Insight, TailRow};

/// Seconds of traffic kept.
pub const RETENTION_S: i64 = 3600;
/// Width of one bucket, seconds: the finest step the UI can show from memory.
pub const GRANULARITY_S: i64 = 10;
/// Exchanges kept for the live tail.
pub const TAIL_LEN: usize = 2000;
/// Finding versions kept.
pub const INSIGHTS_LEN: usize = 1000;

#[derive(Default)]
struct Inner {
    /// Bucket start -> cells by the hash of their dimensions (collisions chained in the vector).
    buckets: BTreeMap<i64, HashMap<u64, Vec<Cell>>>,
    tail: VecDeque<TailRow>,
    insights: VecDeque<Insight>,
}

/// Recent aggregates of the agent's events.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    hasher: foldhash::fast::FixedState,
}

fn ip(e: &Event) -> String {
    match e.src_ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}

fn same_cell(c: &Cell, e: &Event, src_ip: &str) -> bool {
    c.api_id == *e.api_id
        && c.host == *e.host
        && c.route == *e.route
        && c.method == *e.method
        && c.app_id == *e.app_id
        && c.attributed_by == e.attributed_by.as_str()
        && c.key_fingerprint == *e.key_fingerprint
        && c.key_state == e.key_state.as_str()
        && c.status == e.status
        && c.src_ip == src_ip
        && c.client_cgroup == *e.client_cgroup
        && c.client_comm == *e.client_comm
}

fn new_cell(t: i64, e: &Event, src_ip: String) -> Cell {
    Cell {
        t,
        api_id: e.api_id.to_string(),
        api_name: e.api_name.to_string(),
        host: e.host.to_string(),
        route: e.route.to_string(),
        method: e.method.to_string(),
        app_id: e.app_id.to_string(),
        app_name: e.app_name.to_string(),
        app_team: e.app_team.to_string(),
        line_of_business: e.line_of_business.to_string(),
        attributed_by: e.attributed_by.as_str().to_string(),
        key_fingerprint: e.key_fingerprint.to_string(),
        key_suffix: e.key_suffix.to_string(),
        key_state: e.key_state.as_str().to_string(),
        status: e.status,
        src_ip,
        client_cgroup: e.client_cgroup.to_string(),
        client_comm: e.client_comm.to_string(),
        requests: 0,
        errors: 0,
        first_ts: 0.0,
        last_ts: 0.0,
        hist: Hist::default(),
    }
}

fn tail_row(e: &Event, src_ip: String) -> TailRow {
    TailRow {
        ts: e.ts.0 as f64 / 1e6,
        method: e.method.to_string(),
        host: e.host.to_string(),
        path: e.path.to_string(),
        route: e.route.to_string(),
        status: e.status,
        duration_ms: e.duration_us as f64 / 1000.0,
        api_id: e.api_id.to_string(),
        api_name: e.api_name.to_string(),
        app_id: e.app_id.to_string(),
        app_name: e.app_name.to_string(),
        app_team: e.app_team.to_string(),
        line_of_business: e.line_of_business.to_string(),
        key_suffix: e.key_suffix.to_string(),
        key_state: e.key_state.as_str().to_string(),
        attributed_by: e.attributed_by.as_str().to_string(),
        client_comm: e.client_comm.to_string(),
        src_ip,
        side: e.side.as_str().to_string(),
    }
}

fn secs(t: Timestamp) -> f64 {
    t.0 as f64 / 1e6
}

/// A finding version as the UI shows it, with the fields the `insights` table has.
pub fn insight_of(f: &Finding, source: &str) -> Insight {
    Insight {
        ts: secs(f.detected_at),
        id: f.id.clone(),
        version: f.version,
        status: f.status.as_str().to_string(),
        kind: f.kind.as_str().to_string(),
        severity: f.severity.as_str().to_string(),
        team: f.team.clone(),
        api_id: f.api_id.clone(),
        app_id: f.app_id.clone(),
        key_id: f.key_id.clone(),
        key_fingerprint: f.key_fingerprint.clone(),
        workload: f.workload.clone(),
        route: f.route.clone(),
        subject: subject(f),
        title: title(f),
        explanation: f.explanation.clone(),
        evidence: f.evidence.clone(),
        first_seen: secs(f.first_seen),
        last_seen: secs(f.last_seen),
        source: source.to_string(),
        api_name: String::new(),
        app_name: String::new(),
    }
}

/// Whether `text` (lower case) occurs in the row's application, API, path, process, key suffix or key state.
pub fn tail_matches(r: &TailRow, text: &str) -> bool {
    text.is_empty()
        || [
            &r.app_name,
            &r.app_id,
            &r.api_name,
            &r.host,
            &r.path,
            &r.client_comm,
            &r.key_suffix,
            &r.key_state,
        ]
        .iter()
        .any(|s| s.to_lowercase().contains(text))
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch of events; drops buckets older than [`RETENTION_S`] before the newest event.
    pub fn ingest(&self, events: &[Event]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut newest = i64::MIN;
        for e in events {
            let secs = e.ts.0.div_euclid(1_000_000);
            newest = newest.max(secs);
            let t = secs - secs.rem_euclid(GRANULARITY_S);
            let src_ip = ip(e);
            let h = self.hasher.hash_one((
                &*e.api_id,
                &*e.host,
                &*e.route,
                &*e.method,
                &*e.app_id,
                e.attributed_by,
                &*e.key_fingerprint,
                e.key_state,
                e.status,
                &src_ip,
                &*e.client_cgroup,
                &*e.client_comm,
            ));
            let chain = inner.buckets.entry(t).or_default().entry(h).or_default();
            let idx = match chain.iter().position(|c| same_cell(c, e, &src_ip)) {
                Some(i) => i,
                None => {
                    chain.push(new_cell(t, e, src_ip.clone()));
                    chain.len() - 1
                }
            };
            let c = &mut chain[idx];
            let ts = e.ts.0 as f64 / 1e6;
            if c.requests == 0 || ts < c.first_ts {
                c.first_ts = ts;
            }
            c.last_ts = c.last_ts.max(ts);
            c.requests += 1;
            c.errors += u64::from(e.status >= 500 || e.status == 0);
            c.hist.add(e.duration_us);
            inner.tail.push_back(tail_row(e, src_ip));
            if inner.tail.len() > TAIL_LEN {
                inner.tail.pop_front();
            }
        }
        if newest != i64::MIN {
            let keep_from = newest - RETENTION_S;
            inner.buckets = inner.buckets.split_off(&(keep_from - GRANULARITY_S));
        }
    }

    /// Adds a version of a finding of the insights engine.
    pub fn push_insight(&self, i: Insight) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.insights.push_back(i);
            if inner.insights.len() > INSIGHTS_LEN {
                inner.insights.pop_front();
            }
        }
    }

    /// Adds versions of findings of the agent's insights engine (`source` as the `insights` table names it, e.g.
    /// `agent:NODE`).
    pub fn push_findings(&self, findings: &[Finding], source: &str) {
        for f in findings {
            self.push_insight(insight_of(f, source));
        }
    }

    pub fn cells(&self, q: &CellQuery) -> Vec<Cell> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let picked: Vec<Cell> = inner
            .buckets
            .range(q.from - q.from.rem_euclid(GRANULARITY_S)..q.to)
            .flat_map(|(_, cells)| cells.values().flatten())
            .filter(|c| {
                q.filter.matches(c) && c.last_ts >= q.from as f64 && c.first_ts < q.to as f64
            })
            .map(|c| {
                let mut c = c.clone();
                c.project(q.dims, q.from, q.step);
                c
            })
            .collect();
        drop(inner);
        regroup(picked)
    }

    /// The newest `limit` exchanges of `[from, to)` matching `text`, newest first.
    pub fn tail(&self, from: i64, to: i64, limit: usize, text: &str) -> Vec<TailRow> {
        let text = text.to_lowercase();
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .tail
            .iter()
            .rev()
            .filter(|r| r.ts >= from as f64 && r.ts < to as f64 && tail_matches(r, &text))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest version (before `to`) of each finding active in `[from, to)`, newest first.
    pub fn insights(&self, from: i64, to: i64) -> Vec<Insight> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let versions: Vec<Insight> = inner.insights.iter().cloned().collect();
        drop(inner);
        latest(versions, from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttributedBy, KeyState, Timestamp};
    use crate::ui::cells::{Dims, Filter};

    pub fn event(ts_s: i64, app: &str, api: &str, status: u16) -> Event {
        Event {
            ts: Timestamp(ts_s * 1_000_000),
            duration_us: 2_000,
            method: "GET".into(),
            host: "pay.internal".into(),
            path: "/v1/pay/1".into(),
            route: "/v1/pay/{id}".into(),
            status,
            api_id: api.into(),
            api_name: "Payments".into(),
            app_id: app.into(),
            app_name: app.to_uppercase().into(),
            key_state: if app.is_empty() {
                KeyState::None
            } else {
                KeyState::Valid
            },
            attributed_by: if app.is_empty() {
                AttributedBy::None
            } else {
                AttributedBy::Key
            },
            client_comm: "curl".into(),
            src_ip: [10, 0, 0, 1].into(),
            ..Event::default()
        }
    }

    #[test]
    fn findings_are_kept_as_the_table_would_hold_them() {
        use crate::insights::finding::{Kind, Severity, Status};
        let mut f = Finding {
            id: "abc".into(),
            version: 1,
            status: Status::Open,
            kind: Kind::KeyOutsideGrant,
            severity: Severity::Critical,
            api_id: "payments-api".into(),
            app_id: "ci-pipeline".into(),
            key_id: "ci-key".into(),
            key_fingerprint: "fp".into(),
            workload: "ci-job /ci".into(),
            route: String::new(),
            team: "web".into(),
            detected_at: Timestamp(1_760_000_100_000_000),
            first_seen: Timestamp(1_760_000_000_000_000),
            last_seen: Timestamp(1_760_000_100_000_000),
            explanation: "revoked key used".into(),
            evidence: serde_json::Map::from_iter([("calls".to_string(), 3.into())]),
        };
        let s = MemoryStore::new();
        s.push_findings(&[f.clone()], "agent:node1");
        let (want_subject, want_title) = (subject(&f), title(&f));
        f.version = 2;
        f.status = Status::Closed;
        f.detected_at = Timestamp(1_760_000_400_000_000);
        s.push_findings(&[f.clone()], "agent:node1");
        let open = s.insights(1_760_000_000, 1_760_000_300);
        assert_eq!(open.len(), 1);
        let i = &open[0];
        assert_eq!(
            (i.version, i.status.as_str(), i.kind.as_str()),
            (1, "open", "key_outside_grant")
        );
        assert_eq!((&i.subject, &i.title), (&want_subject, &want_title));
        assert_eq!(
            (i.first_seen, i.source.as_str()),
            (1_760_000_000.0, "agent:node1")
        );
        assert_eq!(i.evidence["calls"], 3);
        let later = s.insights(1_760_000_000, 1_760_000_500);
        assert_eq!((later[0].version, later[0].status.as_str()), (2, "closed"));
        assert_eq!(later[0].title, title(&f));
    }

    #[test]
    fn aggregates_by_bucket_and_forgets_after_an_hour() {
        let s = MemoryStore::new();
        let t0 = 1_760_000_000;
        let mut batch: Vec<Event> = (0..30).map(|i| event(t0 + i, "shop", "pay", 200)).collect();
        batch.push(event(t0 + 5, "shop", "pay", 503));
        batch.push(event(t0 + 7, "", "pay", 200));
        s.ingest(&batch);
        let q = CellQuery {
            from: t0,
            to: t0 + 60,
            step: 60,
            filter: Filter::default(),
            dims: Dims {
                app: true,
                ..Dims::default()
            },
        };
        let cells = s.cells(&q);
        let shop = cells.iter().find(|c| c.app_id == "shop").unwrap();
        assert_eq!((shop.requests, shop.errors, shop.t), (31, 1, t0));
        assert_eq!(cells.len(), 2);
        let unattributed = Filter {
            unattributed: true,
            ..Filter::default()
        };
        let only = s.cells(&CellQuery {
            filter: unattributed,
            ..q.clone()
        });
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].requests, 1);
        assert_eq!(s.tail(t0, t0 + 60, 5, "")[0].ts, (t0 + 7) as f64);
        assert_eq!(s.tail(t0, t0 + 60, 100, "SHOP").len(), 31);

        // An event more than an hour later pushes the first minute out.
        s.ingest(&[event(t0 + RETENTION_S + 60, "shop", "pay", 200)]);
        assert!(s.cells(&q).is_empty());
    }
}
