//! The UI's origin sections, from ClickHouse's `http_requests_origin` (each node's decisions with the fleet-wide
//! join's fills, see `origin_join`): an application's downstream cost (calls made on its behalf, below the edge,
//! to services it never calls itself) and an API's composition (which services one external call fans out to).
//! The in-memory store keeps no origin: these sections need ClickHouse and say so.
//!
//! Endpoints: `/api/apps/{app_id}/downstream`, `/api/apis/{api_id}/composition` (range parameters as every page).
//! A call seen on both its nodes counts once, on the calling side (events with a local client).
use serde::{Deserialize, Serialize};

use super::pages::Ctx;
use super::{Source, UiError};

/// A service: the registry API called, else the Host.
const SERVICE: &str = "if(api_id != '', api_id, host)";
/// Below the edge, counted once: on the calling side.
const BELOW_EDGE: &str = "hop >= 1 AND side != 'server'";
const IS_ERROR: &str = "status >= 500 OR status = 0";
/// How far before the range a parent may have started.
const PARENT_LOOKBACK_S: i64 = 3_600;

/// One service in an application's downstream cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamRow {
    pub service: String,
    pub api_name: String,
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub avg_ms: f64,
    pub p95_ms: f64,
    /// Deepest hop below the edge it was reached at.
    pub max_hop: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Downstream {
    pub app_id: String,
    /// False when the UI reads the in-memory store (no origin there).
    pub available: bool,
    pub calls: u64,
    pub errors: u64,
    pub services: Vec<DownstreamRow>,
}

/// One edge of an API's composition: `source` called `target` on behalf of the API's external calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub hop: u16,
    pub calls: u64,
    pub errors: u64,
    pub p95_ms: f64,
    /// Calls per external call of the API.
    #[serde(default)]
    pub per_call: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Composition {
    pub api_id: String,
    pub available: bool,
    /// Calls into the API at the edge (hop 0).
    pub external_calls: u64,
    pub edges: Vec<Edge>,
    /// Every service in the graph (the API first), with the calls it received below the edge.
    pub nodes: Vec<(String, u64)>,
}

fn range_sql(from: i64, to: i64) -> String {
    format!("ts >= toDateTime64({from}, 6, 'UTC') AND ts < toDateTime64({to}, 6, 'UTC')")
}

pub async fn downstream(c: &Ctx<'_>, app_id: &str) -> Result<Downstream, UiError> {
    let mut out = Downstream {
        app_id: app_id.to_string(),
        available: false,
        calls: 0,
        errors: 0,
        services: Vec::new(),
    };
    let Source::ClickHouse(ch) = c.source else {
        return Ok(out);
    };
    let range = range_sql(c.range.from, c.range.to);
    let sql = format!(
        "SELECT service, any(api_name) AS api_name, count() AS calls, countIf(is_error) AS errors, \
         errors / calls AS error_rate, avg(duration_us) / 1000 AS avg_ms, \
         quantile(0.95)(duration_us) / 1000 AS p95_ms, max(hop) AS max_hop \
         FROM (SELECT {SERVICE} AS service, api_name, duration_us, hop, {IS_ERROR} AS is_error \
         FROM http_requests_origin WHERE {range} AND origin_app_id = ? AND {BELOW_EDGE}) \
         WHERE service NOT IN (SELECT {SERVICE} FROM http_requests_origin WHERE {range} AND app_id = ? AND hop = 0) \
         GROUP BY service ORDER BY calls DESC, service"
    );
    let q = ch.client().query(&sql).bind(app_id).bind(app_id);
    out.services = ch.rows(q, "downstream cost").await?;
    out.available = true;
    out.calls = out.services.iter().map(|s| s.calls).sum();
    out.errors = out.services.iter().map(|s| s.errors).sum();
    Ok(out)
}

pub async fn composition(c: &Ctx<'_>, api_id: &str) -> Result<Composition, UiError> {
    let mut out = Composition {
        api_id: api_id.to_string(),
        available: false,
        external_calls: 0,
        edges: Vec::new(),
        nodes: Vec::new(),
    };
    let Source::ClickHouse(ch) = c.source else {
        return Ok(out);
    };
    let range = range_sql(c.range.from, c.range.to);
    let parents = range_sql(c.range.from - PARENT_LOOKBACK_S, c.range.to);
    #[derive(Deserialize)]
    struct Count {
        n: u64,
    }
    let sql = format!(
        "SELECT count() AS n FROM http_requests_origin \
         WHERE {range} AND api_id = ? AND hop = 0 AND origin_by = 'self'"
    );
    let n: Vec<Count> = ch
        .rows(ch.client().query(&sql).bind(api_id), "external calls")
        .await?;
    out.external_calls = n.first().map_or(0, |c| c.n);
    let sql = format!(
        "SELECT if(p.service = '', '(parent not found)', p.service) AS source, c.service AS target, \
         min(c.hop) AS hop, count() AS calls, countIf(c.is_error) AS errors, \
         quantile(0.95)(c.duration_us) / 1000 AS p95_ms \
         FROM (SELECT parent_conn_id, parent_ts, {SERVICE} AS service, duration_us, hop, {IS_ERROR} AS is_error \
         FROM http_requests_origin WHERE {range} AND origin_api_id = ? AND {BELOW_EDGE}) AS c \
         LEFT ANY JOIN (SELECT conn_id, ts, {SERVICE} AS service FROM http_requests_origin \
         WHERE {parents} AND origin_api_id = ?) AS p ON p.conn_id = c.parent_conn_id AND p.ts = c.parent_ts \
         GROUP BY source, target ORDER BY hop, calls DESC, source, target"
    );
    let q = ch.client().query(&sql).bind(api_id).bind(api_id);
    out.edges = ch.rows(q, "composition").await?;
    out.available = true;
    for e in &mut out.edges {
        e.per_call = e.calls as f64 / out.external_calls.max(1) as f64;
    }
    out.nodes = nodes(api_id, &out.edges);
    Ok(out)
}

/// The graph's services: the API, then each target and source in edge order, with the calls each received.
fn nodes(api_id: &str, edges: &[Edge]) -> Vec<(String, u64)> {
    let mut nodes: Vec<(String, u64)> = vec![(api_id.to_string(), 0)];
    for e in edges {
        for (name, calls) in [(&e.source, 0), (&e.target, e.calls)] {
            match nodes.iter_mut().find(|(n, _)| n == name) {
                Some(n) => n.1 += calls,
                None => nodes.push((name.clone(), calls)),
            }
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_list_the_api_first_and_sum_what_each_receives() {
        let e = |s: &str, t: &str, calls| Edge {
            source: s.into(),
            target: t.into(),
            hop: 1,
            calls,
            errors: 0,
            p95_ms: 0.0,
            per_call: 0.0,
        };
        let n = nodes(
            "shop",
            &[
                e("shop", "cart", 4),
                e("cart", "stock", 2),
                e("shop", "stock", 1),
            ],
        );
        assert_eq!(
            n,
            vec![("shop".into(), 0), ("cart".into(), 4), ("stock".into(), 3)]
        );
    }
}
