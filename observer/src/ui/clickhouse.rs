//! The UI's data from ClickHouse: cells grouped in SQL from `http_requests`, the last exchanges, and the insights
//! table when the schema has one. Values from the request (ids, text filters) are bound, never spliced.
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::cells::{Cell, CellQuery, Hist};
use super::model::{latest, Insight, TailRow, OPEN_LOOKBACK_S};
use super::UiError;

/// Reads the agent's ClickHouse database (the client carries the database name and credentials).
#[derive(Clone)]
pub struct ClickHouseSource {
    client: clickhouse::Client,
}

/// A cell as the SQL returns it: the histogram as `sumMap`'s (buckets, counts).
#[derive(Deserialize)]
struct CellRow {
    #[serde(flatten)]
    cell: Cell,
    h: (Vec<u16>, Vec<u64>),
}

impl ClickHouseSource {
    pub fn new(client: clickhouse::Client) -> Self {
        ClickHouseSource { client }
    }

    pub(super) fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    pub(super) async fn rows<T: DeserializeOwned>(
        &self,
        q: clickhouse::query::Query,
        what: &str,
    ) -> Result<Vec<T>, UiError> {
        let err = |e: String| UiError::ClickHouse(format!("{what}: {e}"));
        let bytes = q
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONEachRow")
            .map_err(|e| err(e.to_string()))?
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| err(format!("bad row: {e}"))))
            .collect()
    }

    /// Cells of `q`: one `GROUP BY` over the raw exchanges, dimensions not kept selected as constants. The filter
    /// and the error flag are computed in a subquery, where no output alias shadows a column.
    pub async fn cells(&self, q: &CellQuery) -> Result<Vec<Cell>, UiError> {
        let d = q.dims;
        let keep = |on: bool, expr: &str, name: &str| {
            if on {
                format!("{expr} AS {name}")
            } else {
                format!("'' AS {name}")
            }
        };
        let cols = [
            keep(d.route, "route", "route"),
            keep(d.route, "method", "method"),
            keep(d.app, "app_id", "app_id"),
            keep(d.app, "toString(attributed_by)", "attributed_by"),
            keep(d.key, "key_fingerprint", "key_fingerprint"),
            keep(d.key, "key_suffix", "key_suffix"),
            keep(d.key, "toString(key_state)", "key_state"),
            keep(
                d.workload,
                "replaceRegexpOne(toString(src_ip), '^::ffff:', '')",
                "src_ip",
            ),
            keep(d.workload, "client_cgroup", "client_cgroup"),
            keep(d.workload, "client_comm", "client_comm"),
            if d.status {
                "status".to_string()
            } else {
                "toUInt16(0) AS status".to_string()
            },
        ];
        let names = cols
            .iter()
            .map(|c| c.rsplit(" AS ").next().unwrap_or(c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut filter = String::new();
        if q.filter.api_id.is_some() {
            filter.push_str(" AND api_id = ?");
        }
        if q.filter.app_ids.is_some() {
            filter.push_str(" AND app_id IN ?");
        }
        if q.filter.with_key {
            filter.push_str(" AND key_fingerprint != ''");
        }
        if q.filter.unattributed {
            filter.push_str(" AND attributed_by = 'none'");
        }
        let step = q.step.max(1);
        let sql = format!(
            "SELECT {from} + intDiv(toUnixTimestamp(ts) - {from}, {step}) * {step} AS t, \
             api_id, if(api_id = '', host, '') AS host, {cols}, \
             any(api_name) AS api_name, {app_names}, \
             count() AS requests, countIf(is_error) AS errors, \
             toUnixTimestamp64Micro(min(ts)) / 1e6 AS first_ts, toUnixTimestamp64Micro(max(ts)) / 1e6 AS last_ts, \
             sumMap([toUInt16(floor(log2(greatest(duration_us, 1)) * {steps}))], [toUInt64(1)]) AS h \
             FROM (SELECT *, status >= 500 OR status = 0 AS is_error FROM http_requests \
             WHERE ts >= toDateTime64({from}, 6, 'UTC') AND ts < toDateTime64({to}, 6, 'UTC'){filter}) \
             GROUP BY t, api_id, host, {names} \
             ORDER BY t",
            from = q.from,
            to = q.to,
            cols = cols.join(", "),
            app_names = if d.app {
                "any(app_name) AS app_name, any(app_team) AS app_team, any(line_of_business) AS line_of_business"
            } else {
                "'' AS app_name, '' AS app_team, '' AS line_of_business"
            },
            steps = super::cells::HIST_STEPS_PER_OCTAVE,
        );
        let mut query = self.client.query(&sql);
        if let Some(api) = &q.filter.api_id {
            query = query.bind(api.as_str());
        }
        if let Some(apps) = &q.filter.app_ids {
            query = query.bind(apps.as_slice());
        }
        let rows: Vec<CellRow> = self.rows(query, "traffic cells").await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut c = r.cell;
                c.hist = Hist(r.h.0.into_iter().zip(r.h.1).collect());
                c
            })
            .collect())
    }

    /// The newest `limit` exchanges of `[from, to)`, newest first; `text` (if not empty) must occur in the
    /// application, API, path, process or key suffix.
    pub async fn tail(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        text: &str,
    ) -> Result<Vec<TailRow>, UiError> {
        let sql = format!(
            "SELECT toUnixTimestamp64Micro(ts) / 1e6 AS ts, method, host, path, route, status, \
             duration_us / 1000 AS duration_ms, api_id, api_name, app_id, app_name, app_team, \
             line_of_business, key_suffix, toString(key_state) AS key_state, \
             toString(attributed_by) AS attributed_by, client_comm, \
             replaceRegexpOne(toString(src_ip), '^::ffff:', '') AS src_ip, toString(side) AS side \
             FROM http_requests \
             WHERE ts >= toDateTime64({from}, 6, 'UTC') AND ts < toDateTime64({to}, 6, 'UTC') \
             AND (? = '' OR positionCaseInsensitive(concat(app_name, ' ', app_id, ' ', api_name, ' ', host, ' ', \
             path, ' ', client_comm, ' ', key_suffix, ' ', toString(key_state)), ?) > 0) \
             ORDER BY ts DESC LIMIT {limit}"
        );
        let q = self.client.query(&sql).bind(text).bind(text);
        self.rows(q, "last exchanges").await
    }

    /// The newest version (before `to`) of each finding active in `[from, to)`, from the `insights` table, newest
    /// first; empty when the schema has no such table (a database older than migration 7).
    pub async fn insights(&self, from: i64, to: i64) -> Result<Vec<Insight>, UiError> {
        #[derive(Deserialize)]
        struct Exists {
            n: u64,
        }
        let exists: Vec<Exists> = self
            .rows(
                self.client.query(
                    "SELECT count() AS n FROM system.tables WHERE database = currentDatabase() AND name = 'insights'",
                ),
                "insights table",
            )
            .await?;
        if exists.first().is_none_or(|e| e.n == 0) {
            return Ok(Vec::new());
        }
        let micros = |c: &str| format!("toUnixTimestamp64Micro({c}) / 1e6 AS {c}");
        let sql = format!(
            "SELECT * EXCEPT (ts, first_seen, last_seen), {ts}, {first}, {last} FROM (SELECT * FROM insights \
             WHERE ts >= toDateTime64({lookback}, 6, 'UTC') AND ts < toDateTime64({to}, 6, 'UTC') \
             ORDER BY id, version DESC LIMIT 1 BY id)",
            ts = micros("ts"),
            first = micros("first_seen"),
            last = micros("last_seen"),
            lookback = from - OPEN_LOOKBACK_S,
        );
        let rows: Vec<Insight> = self.rows(self.client.query(&sql), "insights").await?;
        Ok(latest(rows, from, to))
    }
}
