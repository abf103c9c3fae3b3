//! The agent glue with explicit timestamps: findings are counted per kind and status, baselines are saved on
//! schedule and restored, and a full queue drops (and counts) instead of waiting.
use super::*;
use crate::event::KeyState;
use crate::registry::{load_str, KeySecret};

const MIN: i64 = 60_000_000;
const T0: i64 = 1_772_409_600_000_000;

const REGISTRY: &str = "
version: 1
teams:
  - {id: pay, name: Pay}
apis:
  - id: pay-api
    name: Payments API
    owner: pay
    match: {hosts: pay.internal}
    routes: [\"GET /p/{id}\"]
";

fn registry() -> crate::registry::Registry {
    load_str(
        REGISTRY,
        std::path::Path::new("."),
        &KeySecret::from_bytes(b"t"),
    )
    .expect("valid registry")
    .registry
}

fn unknown_key(ts: i64) -> Input<'static> {
    Input {
        ts: Timestamp(ts),
        method: "GET".into(),
        path: "/p/1".into(),
        route: "/p/{id}".into(),
        api_id: "pay-api".into(),
        src_ip: "10.0.0.7".into(),
        status: 200,
        key_fingerprint: "f".repeat(64).into(),
        key_state: KeyState::Unknown,
        ..Input::default()
    }
}

/// The runner's series as `/metrics` shows them.
fn scrape(r: &Runner) -> String {
    let m = Metrics::default();
    r.metrics().register(&m);
    m.render()
}

/// The value of the series `name{labels}` (labels in registration order) in `text`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let series = match labels.is_empty() {
        true => format!("observer_{name} "),
        false => format!("observer_{name}{{{}}} ", labels.join(",")),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn findings_are_counted_per_kind_and_status() {
    let mut r = Runner::new(Config::default(), registry(), None).unwrap();
    let out = r.ingest(&[unknown_key(T0)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, Kind::UnknownKey);
    assert_eq!(out[0].detected_at, Timestamp(T0));
    // The same key again a second later: the finding is open already, no new version.
    assert!(r.ingest(&[unknown_key(T0 + 1_000_000)]).is_empty());
    r.metrics().dropped.inc_by(7);
    let s = scrape(&r);
    let kind = ("kind", "unknown_key");
    assert_eq!(sample(&s, "insights_events_total", &[]), 2.0);
    assert_eq!(sample(&s, "insights_events_dropped_total", &[]), 7.0);
    assert_eq!(
        sample(&s, "insights_findings_total", &[kind, ("status", "open")]),
        1.0
    );
    assert_eq!(
        sample(&s, "insights_findings_total", &[kind, ("status", "closed")]),
        0.0
    );
    assert_eq!(sample(&s, "insights_open_findings", &[kind]), 1.0);
    assert_eq!(
        sample(&s, "insights_open_findings", &[("kind", "flood")]),
        0.0
    );
}

#[test]
fn baselines_are_saved_on_schedule_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("insights-state.json");
    let mut r = Runner::new(Config::default(), registry(), Some(dir.path().into())).unwrap();
    r.ingest(&[unknown_key(T0)]);
    // The first tick saves; the next save is due SAVE_EVERY_US later, not before.
    r.advance(Timestamp(T0 + 1_000_000));
    assert!(file.exists());
    std::fs::remove_file(&file).unwrap();
    r.advance(Timestamp(T0 + 1_000_000 + SAVE_EVERY_US - 1));
    assert!(!file.exists());
    r.advance(Timestamp(T0 + 1_000_000 + SAVE_EVERY_US));
    assert!(file.exists());

    // A restarted agent continues: the open finding is known, so the same key is no new finding.
    let mut again = Runner::new(Config::default(), registry(), Some(dir.path().into())).unwrap();
    let s = scrape(&again);
    let labelled = s
        .lines()
        .filter(|l| l.starts_with("observer_insights_") && l.contains('{'))
        .count();
    assert_eq!(labelled, Kind::ALL.len() * 4);
    assert_eq!(
        sample(&s, "insights_open_findings", &[("kind", "unknown_key")]),
        1.0
    );
    assert!(again.ingest(&[unknown_key(T0 + 6 * MIN)]).is_empty());
}

#[test]
fn without_state_dir_nothing_is_written_and_restart_starts_fresh() {
    let mut r = Runner::new(Config::default(), registry(), None).unwrap();
    r.ingest(&[unknown_key(T0)]);
    r.advance(Timestamp(T0 + 1_000_000));
    r.save().unwrap();
    let mut fresh = Runner::new(Config::default(), registry(), None).unwrap();
    assert_eq!(fresh.ingest(&[unknown_key(T0 + MIN)]).len(), 1);
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (tx, mut rx) = mpsc::channel(1);
    let dropped = Counter::default();
    let feed = Feed {
        tx,
        dropped: dropped.clone(),
    };
    let e = Event {
        ts: Timestamp(T0),
        api_id: "pay-api".into(),
        path: "/p/1".into(),
        ..Event::default()
    };
    feed.offer(&[e.clone(), e.clone()]);
    feed.offer(&[e.clone(), e.clone(), e.clone()]);
    feed.offer(&[]);
    assert_eq!(dropped.get(), 3);
    let got = rx.try_recv().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].api_id, "pay-api");
    assert_eq!(got[0].ts, Timestamp(T0));
    assert!(rx.try_recv().is_err());
    // Room again: the next batch goes through.
    feed.offer(&[e]);
    assert_eq!(rx.try_recv().unwrap().len(), 1);
    assert_eq!(dropped.get(), 3);
}
