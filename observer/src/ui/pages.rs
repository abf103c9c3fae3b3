//! Each page's JSON, computed from the data source's cells (the same code for ClickHouse and memory) and the
//! registry the agent loaded (names, predecessors, grants).
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::sink::clickhouse::registry_rows::{KeyGrantRow, RegistryRows};

use super::cells::{buckets, Cell, CellQuery, Dims, Filter, Hist};
use super::model::*;
use super::{Source, UiError};

/// How far back "new" looks: an application or workload is new when it made no call in this long before the range.
pub const NEW_LOOKBACK_S: i64 = 7 * 86_400;
/// Lines of the overview's consumption chart; smaller ones are summed into "other".
pub const MAX_LINES: usize = 12;
/// Key states that mean a key was used outside its grant.
pub const OUTSIDE_GRANT: &[&str] = &["revoked", "expired", "not_yet_valid", "not_granted_for_api"];

/// What every page is computed against.
pub struct Ctx<'a> {
    pub source: &'a Source,
    pub registry: &'a RegistryRows,
    pub range: Range,
}

impl Ctx<'_> {
    async fn query(
        &self,
        from: i64,
        to: i64,
        step: i64,
        filter: Filter,
        dims: Dims,
    ) -> Result<Vec<Cell>, UiError> {
        self.source
            .cells(&CellQuery {
                from,
                to,
                step,
                filter,
                dims,
            })
            .await
    }

    /// Cells of the range in its buckets (for charts).
    async fn series(&self, filter: Filter, dims: Dims) -> Result<Vec<Cell>, UiError> {
        let r = self.range;
        self.query(r.from, r.to, r.step, filter, dims).await
    }

    /// Cells of the whole range, one bucket (for tables).
    async fn whole(&self, filter: Filter, dims: Dims) -> Result<Vec<Cell>, UiError> {
        let r = self.range;
        self.query(r.from, r.to, r.to - r.from, filter, dims).await
    }

    /// Cells of the `len` seconds before the range, in one bucket.
    async fn before(&self, len: i64, filter: Filter, dims: Dims) -> Result<Vec<Cell>, UiError> {
        let from = self.range.from - len;
        self.query(from, self.range.from, len, filter, dims).await
    }

    /// The findings of the range (newest version of each), with API and application names; those `keep` selects.
    async fn insights(&self, keep: impl Fn(&Insight) -> bool) -> Result<Vec<Insight>, UiError> {
        let mut all = self.source.insights(self.range.from, self.range.to).await?;
        all.retain(keep);
        for i in &mut all {
            if !i.api_id.is_empty() {
                i.api_name = self.api_name(&i.api_id);
            }
            if !i.app_id.is_empty() {
                i.app_name = self.app_name(&i.app_id);
            }
        }
        Ok(all)
    }

    fn app_name(&self, id: &str) -> String {
        self.registry
            .applications
            .iter()
            .find(|a| a.app_id == id)
            .map_or_else(|| id.to_string(), |a| a.name.clone())
    }

    fn api_name(&self, id: &str) -> String {
        self.registry
            .apis
            .iter()
            .find(|a| a.api_id == id)
            .map_or_else(|| id.to_string(), |a| a.name.clone())
    }
}

/// Requests, errors and latency quantiles of `cells`.
pub fn stats<'a>(cells: impl IntoIterator<Item = &'a Cell>) -> Stats {
    let (mut requests, mut errors, mut h) = (0, 0, Hist::default());
    for c in cells {
        requests += c.requests;
        errors += c.errors;
        h.merge(&c.hist);
    }
    Stats {
        requests,
        errors,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        p50_ms: h.quantile_ms(0.5),
        p95_ms: h.quantile_ms(0.95),
    }
}

/// Cells grouped by `key`, in key order.
fn group_by<K: Ord>(cells: &[Cell], key: impl Fn(&Cell) -> K) -> BTreeMap<K, Vec<&Cell>> {
    let mut out: BTreeMap<K, Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        out.entry(key(c)).or_default().push(c);
    }
    out
}

/// One line per group, requests per second per bucket; the largest `max` lines, the rest summed as "other".
fn rate_series(
    range: Range,
    cells: &[Cell],
    max: usize,
    key: impl Fn(&Cell) -> (String, Map<String, Value>),
) -> Series {
    let t = buckets(range.from, range.to, range.step);
    let index: BTreeMap<i64, usize> = t.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // Counts first, divided once: the rates do not depend on the order cells come in.
    let mut counts: BTreeMap<String, (Map<String, Value>, Vec<u64>)> = BTreeMap::new();
    for c in cells {
        let (label, tags) = key(c);
        let line = counts
            .entry(label)
            .or_insert_with(|| (tags, vec![0; t.len()]));
        if let Some(i) = index.get(&c.t) {
            line.1[*i] += c.requests;
        }
    }
    let mut lines: Vec<Line> = counts
        .into_iter()
        .map(|(label, (tags, n))| Line {
            label,
            tags,
            values: n.iter().map(|n| *n as f64 / range.step as f64).collect(),
        })
        .collect();
    let total = |l: &Line| l.values.iter().sum::<f64>();
    lines.sort_by(|a, b| total(b).total_cmp(&total(a)).then(a.label.cmp(&b.label)));
    if lines.len() > max {
        let rest = lines.split_off(max - 1);
        let mut other = Line {
            label: "other".into(),
            tags: Map::new(),
            values: vec![0.0; t.len()],
        };
        for l in rest {
            for (o, v) in other.values.iter_mut().zip(l.values) {
                *o += v;
            }
        }
        lines.push(other);
    }
    Series { t, lines }
}

fn tags(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect()
}

fn first_seen(cells: &[&Cell]) -> f64 {
    cells
        .iter()
        .map(|c| c.first_ts)
        .fold(f64::INFINITY, f64::min)
}

fn last_seen(cells: &[&Cell]) -> f64 {
    cells.iter().map(|c| c.last_ts).fold(0.0, f64::max)
}

fn api_list(cells: &[&Cell]) -> Vec<String> {
    cells
        .iter()
        .map(|c| c.api_label())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn requests(cells: &[&Cell]) -> u64 {
    cells.iter().map(|c| c.requests).sum()
}

fn workloads(cells: &[&Cell]) -> Vec<String> {
    cells
        .iter()
        .map(|c| c.workload())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether a finding is about the API or application `id`: its subject's API or application, or a figure of its
/// evidence naming it (a retry storm's retrying applications).
pub fn insight_about(i: &Insight, id: &str) -> bool {
    let names = |v: &Value| match v {
        Value::String(s) => s == id,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(id)),
        _ => false,
    };
    i.api_id == id || i.app_id == id || i.evidence.values().any(names)
}

/// Findings active per bucket of `range` (observed in it, or open across it), one line per kind.
pub fn insight_timeline(range: Range, items: &[Insight]) -> Series {
    let t = buckets(range.from, range.to, range.step);
    let mut lines: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in items {
        let line = lines
            .entry(i.kind.as_str())
            .or_insert_with(|| vec![0.0; t.len()]);
        for (n, start) in line.iter_mut().zip(&t) {
            let end = (*start + range.step).min(range.to);
            if i.first_seen < end as f64 && (i.is_open() || i.last_seen >= *start as f64) {
                *n += 1.0;
            }
        }
    }
    Series {
        t,
        lines: lines
            .into_iter()
            .map(|(kind, values)| Line {
                label: kind.to_string(),
                tags: tags(&[("kind", kind)]),
                values,
            })
            .collect(),
    }
}

pub async fn overview(ctx: &Ctx<'_>) -> Result<Overview, UiError> {
    let cells = ctx.series(Filter::default(), Dims::APP).await?;
    let consumption = rate_series(ctx.range, &cells, MAX_LINES, |c| {
        let lob = if c.line_of_business.is_empty() {
            "(no line of business)"
        } else {
            &c.line_of_business
        };
        let (api, app) = (c.api_label(), c.app_label());
        (
            format!("{lob} / {api} / {app}"),
            tags(&[
                ("line_of_business", lob),
                ("api_id", &c.api_id),
                ("app_id", &c.app_id),
            ]),
        )
    });
    let apis = group_by(&cells, |c| (c.api_id.clone(), c.host.clone()))
        .into_values()
        .map(|g| ApiStat {
            api_id: g[0].api_id.clone(),
            api_name: g[0].api_label(),
            stats: stats(g.iter().copied()),
        })
        .collect();

    // New: no call in the lookback before the range.
    let seen_apps: BTreeSet<String> = ctx
        .before(NEW_LOOKBACK_S, Filter::default(), Dims::APP)
        .await?
        .into_iter()
        .map(|c| c.app_id)
        .collect();
    let new_apps = group_by(&cells, |c| c.app_id.clone())
        .into_iter()
        .filter(|(id, _)| !id.is_empty() && !seen_apps.contains(id))
        .map(|(id, g)| NewConsumer {
            name: g[0].app_label(),
            team: g[0].app_team.clone(),
            first_seen: first_seen(&g),
            requests: requests(&g),
            apis: api_list(&g),
            app_id: id,
        })
        .collect();
    let seen_workloads: BTreeSet<String> = ctx
        .before(NEW_LOOKBACK_S, Filter::unattributed(), Dims::WORKLOAD)
        .await?
        .iter()
        .map(Cell::workload)
        .collect();
    let shadow_cells = ctx.whole(Filter::unattributed(), Dims::WORKLOAD).await?;
    let new_consumers = group_by(&shadow_cells, Cell::workload)
        .into_iter()
        .filter(|(w, _)| !seen_workloads.contains(w))
        .map(|(w, g)| NewConsumer {
            app_id: String::new(),
            name: w,
            team: String::new(),
            first_seen: first_seen(&g),
            requests: requests(&g),
            apis: api_list(&g),
        })
        .collect();
    Ok(Overview {
        range: ctx.range,
        source: ctx.source.name(),
        totals: stats(&cells),
        consumption,
        apis,
        new_apps,
        new_consumers,
        insights: ctx.insights(Insight::is_open).await?,
    })
}

pub async fn api_page(ctx: &Ctx<'_>, api_id: &str) -> Result<ApiPage, UiError> {
    let by_app = ctx.series(Filter::api(api_id), Dims::APP).await?;
    let rate = rate_series(ctx.range, &by_app, MAX_LINES, |c| {
        (c.app_label(), tags(&[("app_id", &c.app_id)]))
    });
    let by_route = ctx.whole(Filter::api(api_id), Dims::ROUTE).await?;
    let mut routes: Vec<RouteStat> = group_by(&by_route, |c| (c.route.clone(), c.method.clone()))
        .into_iter()
        .map(|((route, method), g)| RouteStat {
            route,
            method,
            stats: stats(g),
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.stats.requests));
    let by_consumer = ctx
        .whole(
            Filter::api(api_id),
            Dims::APP.and(Dims::KEY).and(Dims::WORKLOAD),
        )
        .await?;
    let mut consumers: Vec<ConsumerStat> = group_by(&by_consumer, |c| {
        let who = if c.app_id.is_empty() {
            c.workload()
        } else {
            String::new()
        };
        (
            c.app_id.clone(),
            who,
            c.key_fingerprint.clone(),
            c.key_state.clone(),
        )
    })
    .into_values()
    .map(|g| ConsumerStat {
        app_id: g[0].app_id.clone(),
        app_name: g[0].app_label(),
        attributed_by: g[0].attributed_by.clone(),
        key_suffix: g[0].key_suffix.clone(),
        key_state: g[0].key_state.clone(),
        workloads: workloads(&g),
        requests: requests(&g),
        errors: g.iter().map(|c| c.errors).sum(),
        last_seen: last_seen(&g),
    })
    .collect();
    consumers.sort_by_key(|c| std::cmp::Reverse(c.requests));
    let owner = ctx
        .registry
        .apis
        .iter()
        .find(|a| a.api_id == api_id)
        .map(|a| a.owner.clone())
        .unwrap_or_default();
    Ok(ApiPage {
        range: ctx.range,
        source: ctx.source.name(),
        api_id: api_id.to_string(),
        api_name: ctx.api_name(api_id),
        owner,
        totals: stats(&by_route),
        rate,
        routes,
        consumers,
        insights: ctx.insights(|i| insight_about(i, api_id)).await?,
    })
}

/// The entry of every (key, API) grant in force at `at` (Unix seconds): the newest one already valid then, else
/// (a grant that starts later) the oldest.
fn grants_at(reg: &RegistryRows, at: i64) -> Vec<&KeyGrantRow> {
    let at_us = at * 1_000_000;
    let started = |g: &KeyGrantRow| g.valid_from.is_none_or(|f| f.0 <= at_us);
    let mut pick: BTreeMap<(&str, &str), &KeyGrantRow> = BTreeMap::new();
    for g in &reg.key_grants {
        let e = pick.entry((&g.key_fingerprint, &g.api_id)).or_insert(g);
        let better = match (started(g), started(e)) {
            (true, false) => true,
            (true, true) => g.grant_seq > e.grant_seq,
            (false, false) => g.grant_seq < e.grant_seq,
            (false, true) => false,
        };
        if better {
            *e = g;
        }
    }
    pick.into_values().collect()
}

fn secs(t: Option<crate::event::Timestamp>) -> Option<f64> {
    t.map(|t| t.0 as f64 / 1e6)
}

/// State of a grant at `at` (Unix seconds).
pub fn grant_state(g: &KeyGrantRow, at: i64) -> &'static str {
    let at = at * 1_000_000;
    if g.revoked_at.is_some_and(|t| t.0 <= at) {
        "revoked"
    } else if g.valid_until.is_some_and(|t| t.0 < at) {
        "expired"
    } else if g.valid_from.is_some_and(|t| t.0 > at) {
        "not_yet_valid"
    } else {
        "active"
    }
}

/// Every current grant `keep` selects, with its use in `cells` (dimensions: key and API).
fn grant_uses(ctx: &Ctx<'_>, cells: &[Cell], keep: impl Fn(&KeyGrantRow) -> bool) -> Vec<GrantUse> {
    let used = group_by(cells, |c| (c.key_fingerprint.clone(), c.api_id.clone()));
    grants_at(ctx.registry, ctx.range.to)
        .into_iter()
        .filter(|g| keep(g))
        .map(|g| {
            let u = used.get(&(g.key_fingerprint.clone(), g.api_id.clone()));
            let calls = u.map_or(0, |u| requests(u));
            let team = ctx
                .registry
                .applications
                .iter()
                .find(|a| a.app_id == g.app_id)
                .map(|a| a.team.clone())
                .unwrap_or_default();
            GrantUse {
                key_id: g.key_id.clone(),
                key_suffix: g.key_suffix.clone(),
                key_fingerprint: g.key_fingerprint.clone(),
                app_id: g.app_id.clone(),
                app_name: ctx.app_name(&g.app_id),
                team,
                api_id: g.api_id.clone(),
                api_name: ctx.api_name(&g.api_id),
                granted_by: g.granted_by.clone(),
                valid_from: secs(g.valid_from),
                valid_until: secs(g.valid_until),
                revoked_at: secs(g.revoked_at),
                revoked_by: g.revoked_by.clone(),
                note: g.note.clone(),
                state: grant_state(g, ctx.range.to),
                calls,
                first_used: u.map(|u| first_seen(u)),
                last_used: u.map(|u| last_seen(u)),
            }
        })
        .collect()
}

pub async fn app_page(ctx: &Ctx<'_>, app_id: &str) -> Result<AppPage, UiError> {
    let app = ctx
        .registry
        .applications
        .iter()
        .find(|a| a.app_id == app_id);
    let pred = app.map(|a| a.predecessor.clone()).unwrap_or_default();
    let mut ids = vec![app_id.to_string()];
    if !pred.is_empty() {
        ids.push(pred.clone());
    }
    let both = ctx.series(Filter::apps(ids), Dims::APP).await?;
    let only = || Filter::apps(vec![app_id.to_string()]);
    let len = ctx.range.to - ctx.range.from;
    let before: u64 = ctx
        .before(len, only(), Dims::APP)
        .await?
        .iter()
        .map(|c| c.requests)
        .sum();
    let baseline_rps = before as f64 / len as f64;
    let mut compare = rate_series(ctx.range, &both, 3, |c| {
        let label = if c.app_id == app_id {
            "this_app"
        } else {
            "predecessor"
        };
        (label.to_string(), tags(&[("app_id", &c.app_id)]))
    });
    for want in ["this_app", "predecessor"] {
        if (want == "this_app" || !pred.is_empty())
            && !compare.lines.iter().any(|l| l.label == want)
        {
            compare.lines.push(Line {
                label: want.into(),
                tags: Map::new(),
                values: vec![0.0; compare.t.len()],
            });
        }
    }
    compare.lines.push(Line {
        label: "baseline".into(),
        tags: Map::new(),
        values: vec![baseline_rps; compare.t.len()],
    });
    compare.lines.sort_by_key(|l| match l.label.as_str() {
        "this_app" => 0,
        "baseline" => 1,
        _ => 2,
    });

    let by_route = ctx.whole(only(), Dims::ROUTE).await?;
    let mut calls: Vec<AppCall> = group_by(&by_route, |c| {
        (
            c.api_id.clone(),
            c.host.clone(),
            c.route.clone(),
            c.method.clone(),
        )
    })
    .into_values()
    .map(|g| AppCall {
        api_id: g[0].api_id.clone(),
        api_name: g[0].api_label(),
        route: g[0].route.clone(),
        method: g[0].method.clone(),
        stats: stats(g),
    })
    .collect();
    calls.sort_by_key(|c| std::cmp::Reverse(c.stats.requests));
    let by_status = ctx.whole(only(), Dims::STATUS).await?;
    let errors = group_by(&by_status, |c| c.status)
        .into_iter()
        .filter(|(s, _)| *s >= 400 || *s == 0)
        .map(|(status, g)| StatusCount {
            status,
            requests: requests(&g),
        })
        .collect();
    let by_key = ctx.whole(only(), Dims::KEY).await?;
    let keys = grant_uses(ctx, &by_key, |g| g.app_id == app_id);
    Ok(AppPage {
        range: ctx.range,
        source: ctx.source.name(),
        app_id: app_id.to_string(),
        app_name: ctx.app_name(app_id),
        team: app.map(|a| a.team.clone()).unwrap_or_default(),
        line_of_business: app.map(|a| a.line_of_business.clone()).unwrap_or_default(),
        predecessor_name: if pred.is_empty() {
            String::new()
        } else {
            ctx.app_name(&pred)
        },
        predecessor_id: pred,
        totals: stats(&by_route),
        compare,
        baseline_rps,
        calls,
        errors,
        keys,
        insights: ctx.insights(|i| insight_about(i, app_id)).await?,
    })
}

pub async fn access(ctx: &Ctx<'_>) -> Result<Access, UiError> {
    let keyed = ctx
        .whole(
            Filter::keyed(),
            Dims::APP.and(Dims::KEY).and(Dims::WORKLOAD),
        )
        .await?;
    let grants = grant_uses(ctx, &keyed, |_| true);
    let unused = grants
        .iter()
        .filter(|g| g.state == "active" && g.calls == 0)
        .cloned()
        .collect();
    // Who granted and revoked the entry in force at the last such call.
    let grant_of = |fp: &str, api: &str, at: f64| {
        grants_at(ctx.registry, at as i64)
            .into_iter()
            .find(|g| g.key_fingerprint == fp && g.api_id == api)
            .map(|g| (g.granted_by.clone(), g.revoked_by.clone()))
            .unwrap_or_default()
    };
    let mut outside: Vec<OutsideUse> = group_by(&keyed, |c| {
        (
            c.key_fingerprint.clone(),
            c.api_id.clone(),
            c.host.clone(),
            c.key_state.clone(),
        )
    })
    .into_values()
    .filter(|g| OUTSIDE_GRANT.contains(&g[0].key_state.as_str()))
    .map(|g| {
        let (granted_by, revoked_by) = grant_of(&g[0].key_fingerprint, &g[0].api_id, last_seen(&g));
        OutsideUse {
            key_suffix: g[0].key_suffix.clone(),
            app_name: g[0].app_label(),
            api_name: g[0].api_label(),
            key_state: g[0].key_state.clone(),
            workloads: workloads(&g),
            calls: requests(&g),
            last_seen: last_seen(&g),
            granted_by,
            revoked_by,
        }
    })
    .collect();
    outside.sort_by(|a, b| b.last_seen.total_cmp(&a.last_seen));
    let shared = group_by(&keyed, |c| c.key_fingerprint.clone())
        .into_values()
        .filter(|g| workloads(g).len() > 1)
        .map(|g| SharedKey {
            key_suffix: g[0].key_suffix.clone(),
            app_name: g[0].app_label(),
            workloads: workloads(&g),
            calls: requests(&g),
        })
        .collect();
    let unclaimed = ctx
        .whole(Filter::unattributed(), Dims::KEY.and(Dims::WORKLOAD))
        .await?;
    let mut shadow: Vec<ShadowConsumer> = group_by(&unclaimed, |c| {
        (
            c.client_comm.clone(),
            c.client_cgroup.clone(),
            c.src_ip.clone(),
        )
    })
    .into_iter()
    .map(|((client_comm, client_cgroup, src_ip), g)| ShadowConsumer {
        client_comm,
        client_cgroup,
        src_ip,
        apis: api_list(&g),
        calls: requests(&g),
        with_key: g
            .iter()
            .filter(|c| c.key_state != "none")
            .map(|c| c.requests)
            .sum(),
        first_seen: first_seen(&g),
        last_seen: last_seen(&g),
    })
    .collect();
    shadow.sort_by_key(|s| std::cmp::Reverse(s.calls));
    Ok(Access {
        range: ctx.range,
        source: ctx.source.name(),
        grants,
        unused,
        outside,
        shared,
        shadow,
    })
}

pub async fn insights(ctx: &Ctx<'_>, team: &str, kind: &str) -> Result<Insights, UiError> {
    let all = ctx.insights(|_| true).await?;
    let set = |f: fn(&Insight) -> &String| {
        all.iter()
            .map(|i| f(i).clone())
            .filter(|s| !s.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let (kinds, teams) = (set(|i| &i.kind), set(|i| &i.team));
    let items: Vec<Insight> = all
        .into_iter()
        .filter(|i| (team.is_empty() || i.team == team) && (kind.is_empty() || i.kind == kind))
        .collect();
    Ok(Insights {
        range: ctx.range,
        source: ctx.source.name(),
        kinds,
        teams,
        timeline: insight_timeline(ctx.range, &items),
        items,
    })
}

pub fn meta(ctx: &Ctx<'_>) -> Meta {
    let r = ctx.registry;
    Meta {
        source: ctx.source.name(),
        apps: r
            .applications
            .iter()
            .map(|a| (a.app_id.clone(), a.name.clone()))
            .collect(),
        apis: r
            .apis
            .iter()
            .map(|a| (a.api_id.clone(), a.name.clone()))
            .collect(),
        teams: r
            .teams
            .iter()
            .map(|t| (t.team.clone(), t.name.clone()))
            .collect(),
    }
}
