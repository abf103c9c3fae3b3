//! `observer insights list`: the newest version of each finding from ClickHouse (`insights_latest`), newest first,
//! as an aligned table or one JSON object per line. A finding row is the UI's [`Insight`] (one definition).
use std::io::Write;
use std::time::Duration;

use super::fleet::{FleetError, StoreArgs};
use super::Kind;
use crate::event::Timestamp;
pub use crate::ui::model::Insight;

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Findings whose newest version is at most this old.
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub since: Duration,
    /// Only this team's findings.
    #[arg(long)]
    pub team: Option<String>,
    /// Only findings of this kind (e.g. retry_storm).
    #[arg(long, value_parser = |s: &str| Kind::parse(s).ok_or_else(|| format!("unknown kind {s:?}")))]
    pub kind: Option<Kind>,
    /// Most findings printed.
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// One JSON object per finding instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// SQL selecting the `insights` columns of `table` (after `WHERE`, `rest`) as [`Insight`] reads them: times in
/// Unix seconds.
pub fn select(table: &str, rest: &str) -> String {
    let secs = |c: &str| format!("toUnixTimestamp64Micro({c}) / 1e6 AS {c}");
    format!(
        "SELECT * EXCEPT (ts, first_seen, last_seen), {}, {}, {} FROM {table} {rest}",
        secs("ts"),
        secs("first_seen"),
        secs("last_seen")
    )
}

/// The findings of a query built with [`select`] (one row per finding version, as the UI reads them).
pub async fn rows(query: clickhouse::query::Query) -> Result<Vec<Insight>, FleetError> {
    let what = "insights_latest";
    let bytes = query
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .map_err(|source| FleetError::Query { what, source })?
        .collect()
        .await
        .map_err(|source| FleetError::Query { what, source })?;
    serde_json::Deserializer::from_slice(&bytes)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| FleetError::Query {
            what,
            source: clickhouse::error::Error::Custom(format!("bad row: {e}")),
        })
}

/// The findings `args` select, newest first.
pub async fn fetch(args: &ListArgs) -> Result<Vec<Insight>, FleetError> {
    let client = args.store.client()?;
    let since = Timestamp(Timestamp::now().0 - args.since.as_micros() as i64);
    let mut rest = String::from("WHERE ts >= fromUnixTimestamp64Micro(toInt64(?), 'UTC')");
    if args.team.is_some() {
        rest.push_str(" AND team = ?");
    }
    if args.kind.is_some() {
        rest.push_str(" AND kind = ?");
    }
    rest.push_str(" ORDER BY ts DESC, id LIMIT ?");
    let mut query = client
        .query(&select("insights_latest", &rest))
        .bind(since.0);
    if let Some(t) = &args.team {
        query = query.bind(t.as_str());
    }
    if let Some(k) = args.kind {
        query = query.bind(k.as_str());
    }
    rows(query.bind(args.limit)).await
}

fn rfc3339(secs: f64) -> String {
    Timestamp((secs * 1e6).round() as i64).to_rfc3339()
}

/// Writes the findings as JSON lines (evidence as an object) or as a table whose columns are aligned.
pub fn print(rows: &[Insight], json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        for r in rows {
            let mut v = serde_json::to_value(r).map_err(std::io::Error::other)?;
            v["ts"] = rfc3339(r.ts).into();
            v["first_seen"] = rfc3339(r.first_seen).into();
            v["last_seen"] = rfc3339(r.last_seen).into();
            // Registry names are the UI's; the table does not hold them.
            if let Some(o) = v.as_object_mut() {
                o.remove("api_name");
                o.remove("app_name");
            }
            serde_json::to_writer(&mut *out, &v)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    let header = [
        "DETECTED", "SEVERITY", "STATUS", "KIND", "TEAM", "SUBJECT", "SOURCE",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let t = rfc3339(r.ts);
            [
                format!("{}Z", &t[..19.min(t.len())]),
                r.severity.clone(),
                format!("{} v{}", r.status, r.version),
                r.kind.clone(),
                r.team.clone(),
                r.subject.clone(),
                r.source.clone(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cols: &[&str], last: &str| -> std::io::Result<()> {
        for (s, w) in cols.iter().zip(width) {
            write!(out, "{s:<w$}  ")?;
        }
        writeln!(out, "{last}")
    };
    line(out, &header, "EXPLANATION")?;
    for (c, r) in cells.iter().zip(rows) {
        let cols: Vec<&str> = c.iter().map(String::as_str).collect();
        line(out, &cols, &r.explanation)?;
    }
    if rows.is_empty() {
        writeln!(out, "(no findings)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, kind: &str, subject: &str) -> Insight {
        Insight {
            ts: ts as f64 / 1e6,
            id: "ab".into(),
            version: 2,
            status: "update".into(),
            kind: kind.into(),
            severity: "warning".into(),
            team: "payments".into(),
            api_id: "payments-api".into(),
            subject: subject.into(),
            title: "t".into(),
            explanation: "why".into(),
            evidence: serde_json::from_str(r#"{"ratio":3.4}"#).unwrap(),
            last_seen: ts as f64 / 1e6,
            source: "fleet".into(),
            ..Insight::default()
        }
    }

    #[test]
    fn table_columns_align_and_json_has_evidence_as_an_object() {
        let rows = [
            row(1_772_443_800_000_000, "retry_storm", "api payments-api"),
            row(
                1_772_443_700_000_000,
                "new_app_outpaces_predecessor",
                "app checkout-v2 on payments-api",
            ),
        ];
        let mut out = Vec::new();
        print(&rows, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let col = |l: &str, s: &str| l.find(s).unwrap_or_else(|| panic!("{s} in {l}"));
        assert_eq!(col(lines[0], "SUBJECT"), col(lines[1], "api payments-api"));
        assert_eq!(col(lines[0], "SUBJECT"), col(lines[2], "app checkout-v2"));
        assert_eq!(col(lines[1], "fleet"), col(lines[2], "fleet"));
        assert!(lines[1].starts_with("2026-03-02T09:30:00Z"), "{}", lines[1]);

        let mut out = Vec::new();
        print(&rows, true, &mut out).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["evidence"]["ratio"], 3.4);
        assert_eq!(first["ts"], "2026-03-02T09:30:00.000000Z");
        assert_eq!(first["kind"], "retry_storm");
    }
}
