//! `observer insights list`: the newest version of each finding from ClickHouse (`insights_latest`), newest first,
//! as an aligned table or one JSON object per line.
use std::io::Write;
use std::time::Duration;

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::fleet::{FleetError, StoreArgs};
use super::Kind;
use crate::event::Timestamp;
use crate::sink::clickhouse::registry_rows::ts_micros;

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

/// One finding as `insights_latest` holds it.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct Listed {
    #[serde(with = "ts_micros")]
    pub ts: Timestamp,
    pub id: String,
    pub version: u32,
    pub status: String,
    pub kind: String,
    pub severity: String,
    pub team: String,
    pub api_id: String,
    pub app_id: String,
    pub subject: String,
    pub title: String,
    pub explanation: String,
    pub evidence: String,
    #[serde(with = "ts_micros")]
    pub first_seen: Timestamp,
    #[serde(with = "ts_micros")]
    pub last_seen: Timestamp,
    pub source: String,
}

/// The findings `args` select, newest first.
pub async fn fetch(args: &ListArgs) -> Result<Vec<Listed>, FleetError> {
    let client = args.store.client()?;
    let since = Timestamp(Timestamp::now().0 - args.since.as_micros() as i64);
    let mut sql = String::from(
        "SELECT ?fields FROM insights_latest WHERE ts >= fromUnixTimestamp64Micro(toInt64(?), 'UTC')",
    );
    if args.team.is_some() {
        sql.push_str(" AND team = ?");
    }
    if args.kind.is_some() {
        sql.push_str(" AND kind = ?");
    }
    sql.push_str(" ORDER BY ts DESC, id LIMIT ?");
    let mut query = client.query(&sql).bind(since.0);
    if let Some(t) = &args.team {
        query = query.bind(t.as_str());
    }
    if let Some(k) = args.kind {
        query = query.bind(k.as_str());
    }
    query
        .bind(args.limit)
        .fetch_all::<Listed>()
        .await
        .map_err(|source| FleetError::Query {
            what: "insights_latest",
            source,
        })
}

/// Writes the findings as JSON lines (evidence as an object) or as a table whose columns are aligned.
pub fn print(rows: &[Listed], json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        for r in rows {
            let mut v = serde_json::to_value(r).map_err(std::io::Error::other)?;
            v["ts"] = r.ts.to_rfc3339().into();
            v["first_seen"] = r.first_seen.to_rfc3339().into();
            v["last_seen"] = r.last_seen.to_rfc3339().into();
            v["evidence"] = serde_json::from_str(&r.evidence).unwrap_or(r.evidence.clone().into());
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
            let t = r.ts.to_rfc3339();
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

    fn row(ts: i64, kind: &str, subject: &str) -> Listed {
        Listed {
            ts: Timestamp(ts),
            id: "ab".into(),
            version: 2,
            status: "update".into(),
            kind: kind.into(),
            severity: "warning".into(),
            team: "payments".into(),
            api_id: "payments-api".into(),
            app_id: String::new(),
            subject: subject.into(),
            title: "t".into(),
            explanation: "why".into(),
            evidence: r#"{"ratio":3.4}"#.into(),
            first_seen: Timestamp(0),
            last_seen: Timestamp(ts),
            source: "fleet".into(),
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
