//! Engine tests on event streams with explicit timestamps: each detector fires on its scenario and stays silent
//! on steady traffic and on the decoys.
use super::finding::{Finding, Kind, Status};
use super::{Config, Engine, Input};
use crate::event::{AttributedBy, KeyState, Timestamp};
use crate::registry::{load_str, KeySecret};

const MIN: i64 = 60_000_000;
const T0: i64 = 1_772_409_600_000_000;

const REGISTRY: &str = "
version: 1
teams:
  - {id: pay, name: Pay}
  - {id: ux, name: UX}
apis:
  - id: pay-api
    name: Payments API
    owner: pay
    match: {hosts: pay.internal}
    routes: [GET /p, \"GET /p/{id}\"]
  - id: rates
    name: Rates API
    owner: pay
    match: {hosts: rates.internal}
    auth: anonymous
applications:
  - {id: a, name: App A, team: ux, workload: {comm: appa}}
  - {id: b, name: App B, team: ux}
  - {id: a2, name: App A2, team: ux, predecessor: a}
  - {id: c, name: App C, team: ux}
keys:
  - id: ka
    application: a
    fingerprint: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
    granted_by: x
    granted_at: 2020-01-01
    revoked_at: 2026-03-04
    revoked_by: y
    apis: [pay-api]
  - id: kb
    application: b
    fingerprint: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
    granted_by: z
    granted_at: 2020-01-01
    apis: [pay-api]
";

fn engine() -> Engine {
    engine_with(Config::default())
}

fn engine_with(cfg: Config) -> Engine {
    let reg = load_str(
        REGISTRY,
        std::path::Path::new("."),
        &KeySecret::from_bytes(b"t"),
    )
    .expect("valid registry")
    .registry;
    Engine::new(cfg, reg)
}

fn ev(ts: i64, api: &str, app: &str, src: &str, status: u16, hash: u64) -> Input<'static> {
    Input {
        ts: Timestamp(ts),
        method: "GET".into(),
        path: "/p/1".into(),
        route: "/p/{id}".into(),
        api_id: api.to_string().into(),
        app_id: app.to_string().into(),
        src_ip: src.to_string().into(),
        status,
        request_hash: Some(hash),
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
        ..Input::default()
    }
}

/// Steady traffic from `apps` on pay-api, `per_min` each, from minute `from` to `to` (exclusive), evenly spread.
fn steady(
    e: &mut Engine,
    from: i64,
    to: i64,
    per_min: i64,
    mut each: impl FnMut(i64, &mut Input<'static>),
) {
    let mut n: u64 = 0;
    for m in from..to {
        for k in 0..per_min {
            for (j, app) in ["a", "b"].into_iter().enumerate() {
                n += 1;
                let ts = T0 + m * MIN + k * MIN / per_min + j as i64 * 7_000_000 % (MIN / per_min);
                let mut i = ev(ts, "pay-api", app, &format!("10.0.0.{}", j + 1), 200, n);
                each(m, &mut i);
                e.ingest(&i);
            }
        }
    }
}

fn kinds(fs: &[Finding]) -> Vec<Kind> {
    let mut k: Vec<Kind> = fs
        .iter()
        .filter(|f| f.status == Status::Open)
        .map(|f| f.kind)
        .collect();
    k.dedup();
    k
}

const DAYS3: i64 = 3 * 1440;

#[test]
fn steady_traffic_raises_nothing_and_a_backend_failure_is_diagnosed_but_a_blip_is_not() {
    let mut e = engine();
    steady(&mut e, 0, DAYS3, 20, |_, _| {});
    let mut out = Vec::new();
    e.drain(&mut out);
    assert_eq!(kinds(&out), vec![], "{out:#?}");
    // A 60 s blip of errors: silent.
    steady(&mut e, DAYS3, DAYS3 + 30, 20, |m, i| {
        if m == DAYS3 + 10 && i.ts.0 % 2 == 0 {
            i.status = 502;
        }
    });
    e.drain(&mut out);
    assert_eq!(kinds(&out), vec![], "{out:#?}");
    // Half the requests of every consumer fail for 10 minutes at the usual rate.
    let onset = DAYS3 + 30;
    let mut k = 0u64;
    steady(&mut e, onset, onset + 20, 20, |m, i| {
        k += 1;
        // Every other request of each client (requests alternate between the two clients).
        if m < onset + 10 && (k / 2).is_multiple_of(2) {
            i.status = 503;
        }
    });
    e.drain(&mut out);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::BackendFailure)
        .expect("backend failure");
    assert!(f.detected_at.0 - (T0 + onset * MIN) <= 5 * MIN, "{f:#?}");
    assert_eq!(f.team, "pay");
    assert!(f.explanation.contains("Payments API"), "{}", f.explanation);
    assert!(out
        .iter()
        .any(|f| f.kind == Kind::BackendFailure && f.status == Status::Closed));
    assert_eq!(kinds(&out), vec![Kind::BackendFailure]);
}

/// Minutes `onset..onset + minutes` of pay-api: errors on half the requests of a and b, and every failed request
/// re-sent twice by the same client within seconds, in time order.
fn retry_storm(onset: i64, minutes: i64) -> Vec<Input<'static>> {
    let mut all = Vec::new();
    let mut k = 0u64;
    let mut n: u64 = 1 << 40;
    for m in onset..onset + minutes {
        for s in 0..20 {
            for (j, app) in ["a", "b"].into_iter().enumerate() {
                k += 1;
                n += 1;
                let ts = T0 + m * MIN + s * MIN / 20 + j as i64 * 1_000;
                let fail = (k / 2).is_multiple_of(2);
                let i = ev(
                    ts,
                    "pay-api",
                    app,
                    &format!("10.0.0.{}", j + 1),
                    if fail { 503 } else { 200 },
                    n,
                );
                if fail {
                    for r in 1..=2 {
                        let mut again = i.clone();
                        again.ts = Timestamp(ts + r * 1_000_000);
                        all.push(again);
                    }
                }
                all.push(i);
            }
        }
    }
    all.sort_by_key(|i| i.ts);
    all
}

#[test]
fn errors_then_repeated_requests_are_a_retry_storm_and_a_burst_of_identical_calls_a_client_bug() {
    let onset = DAYS3;
    let mut e2 = engine();
    steady(&mut e2, 0, DAYS3, 20, |_, _| {});
    let all = retry_storm(onset, 10);
    for i in &all {
        e2.ingest(i);
    }
    e2.advance(Timestamp(T0 + (onset + 12) * MIN));
    let mut out = Vec::new();
    e2.drain(&mut out);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::RetryStorm)
        .expect("retry storm");
    assert!(f.detected_at.0 - (T0 + onset * MIN) <= 5 * MIN, "{f:#?}");
    assert!(
        f.explanation.contains("App A") && f.explanation.contains("App B"),
        "{}",
        f.explanation
    );
    assert!(!kinds(&out).contains(&Kind::BackendFailure), "{out:#?}");

    // Client bug: app b sends 8x its rate, the same request from one address over and over.
    let mut e3 = engine();
    steady(&mut e3, 0, DAYS3, 20, |_, _| {});
    let onset = DAYS3;
    let mut all = Vec::new();
    for m in onset..onset + 10 {
        for s in 0..160 {
            all.push(ev(
                T0 + m * MIN + s * MIN / 160 + 3,
                "pay-api",
                "b",
                "10.9.9.9",
                200,
                7,
            ));
        }
    }
    let mut n = 1u64 << 50;
    for m in onset..onset + 12 {
        for s in 0..20 {
            for (j, app) in ["a", "b"].into_iter().enumerate() {
                n += 1;
                all.push(ev(
                    T0 + m * MIN + s * MIN / 20 + j as i64,
                    "pay-api",
                    app,
                    &format!("10.0.0.{}", j + 1),
                    200,
                    n,
                ));
            }
        }
    }
    all.sort_by_key(|i| i.ts);
    for i in &all {
        e3.ingest(i);
    }
    let mut out = Vec::new();
    e3.drain(&mut out);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::ClientBug)
        .expect("client bug");
    assert_eq!(f.app_id, "b");
    assert!(f.detected_at.0 - (T0 + onset * MIN) <= 5 * MIN, "{f:#?}");
    assert_eq!(kinds(&out), vec![Kind::ClientBug], "{out:#?}");
}

#[test]
fn a_flash_crowd_of_known_clients_and_a_level_shift_raise_nothing() {
    let mut e = engine();
    steady(&mut e, 0, DAYS3, 20, |_, _| {});
    // 4x the rate for 30 minutes, same clients, distinct requests, then a permanent 2x.
    let mut n = 1u64 << 45;
    let mut all = Vec::new();
    for m in DAYS3..DAYS3 + 120 {
        let per = if m < DAYS3 + 30 { 80 } else { 40 };
        for s in 0..per {
            for (j, app) in ["a", "b"].into_iter().enumerate() {
                n += 1;
                all.push(ev(
                    T0 + m * MIN + s * MIN / per + j as i64,
                    "pay-api",
                    app,
                    &format!("10.0.0.{}", j + 1),
                    200,
                    n,
                ));
            }
        }
    }
    for i in &all {
        e.ingest(i);
    }
    let mut out = Vec::new();
    e.drain(&mut out);
    assert_eq!(kinds(&out), vec![], "{out:#?}");
}

#[test]
fn governance_findings_are_raised_on_the_event_and_persisting_ones_update() {
    let mut e = engine();
    steady(&mut e, 0, 1500, 2, |_, _| {});
    let t = T0 + 1500 * MIN;
    let mut revoked = ev(t, "pay-api", "a", "10.0.0.1", 200, 1);
    revoked.key_fingerprint = "a".repeat(64).into();
    revoked.key_state = KeyState::Revoked;
    revoked.client_comm = "appa".into();
    let mut unknown = ev(t + 1, "pay-api", "", "10.0.0.7", 200, 2);
    unknown.key_fingerprint = "f".repeat(64).into();
    unknown.key_state = KeyState::Unknown;
    let mut shadow = ev(t + 2, "pay-api", "", "10.0.0.8", 200, 3);
    shadow.client_comm = "cron".into();
    shadow.client_cgroup = "/system.slice/cron.service".into();
    let mut shared = ev(t + 3, "pay-api", "a", "10.0.0.9", 200, 4);
    shared.key_fingerprint = "a".repeat(64).into();
    shared.client_comm = "curl".into();
    let mut undocumented = ev(t + 4, "pay-api", "b", "10.0.0.2", 200, 5);
    undocumented.method = "DELETE".into();
    for i in [&revoked, &unknown, &shadow, &shared, &undocumented] {
        e.ingest(i);
    }
    let mut out = Vec::new();
    e.drain(&mut out);
    let got: Vec<(Kind, i64)> = out.iter().map(|f| (f.kind, f.detected_at.0 - t)).collect();
    assert_eq!(
        got,
        vec![
            (Kind::KeyOutsideGrant, 0),
            (Kind::UnknownKey, 1),
            (Kind::ShadowConsumer, 2),
            (Kind::KeyShared, 3),
            (Kind::UndocumentedRoute, 4)
        ]
    );
    assert_eq!(out[0].severity, super::Severity::Critical);
    assert_eq!(out[0].key_id, "ka");
    assert_eq!(out[2].workload, "cron /system.slice/cron.service");
    // The same revoked key 20 minutes later: an update (update_every 15 min), not a second finding.
    revoked.ts = Timestamp(t + 20 * MIN);
    e.ingest(&revoked);
    e.drain(&mut out);
    let versions: Vec<_> = out
        .iter()
        .filter(|f| f.kind == Kind::KeyOutsideGrant)
        .map(|f| (f.version, f.status))
        .collect();
    assert_eq!(versions[..2], [(1, Status::Open), (2, Status::Update)]);
}

#[test]
fn a_successor_outpacing_its_predecessor_and_a_metronome_newcomer_are_found_and_state_survives_a_restart(
) {
    let mut e = engine();
    steady(&mut e, 0, DAYS3, 10, |_, _| {});
    let dir = tempfile::tempdir().unwrap();
    e.save(dir.path()).unwrap();
    let mut e = engine();
    assert!(e.restore_from(dir.path()).unwrap());
    let onset = DAYS3;
    let mut all = Vec::new();
    let mut n = 1u64 << 52;
    for m in onset..onset + 10 {
        for s in 0..40 {
            n += 1;
            // Irregular arrivals: a busy client is no metronome.
            let jitter = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as i64 % 1_000_000;
            all.push(ev(
                T0 + m * MIN + s * MIN / 40 + jitter,
                "pay-api",
                "a2",
                "10.0.0.5",
                200,
                n,
            ));
        }
        for s in 0..10 {
            n += 1;
            all.push(ev(
                T0 + m * MIN + s * MIN / 10 + 9,
                "pay-api",
                "b",
                "10.0.0.2",
                200,
                n,
            ));
        }
        // App C calls the anonymous Rates API every 3 s exactly.
        for s in 0..20 {
            let mut i = ev(
                T0 + m * MIN + s * 3_000_000,
                "rates",
                "c",
                "10.0.0.6",
                200,
                0,
            );
            i.key_state = KeyState::None;
            i.attributed_by = AttributedBy::Workload;
            i.client_comm = "appc".into();
            all.push(i);
        }
    }
    all.sort_by_key(|i| i.ts);
    for i in &all {
        e.ingest(i);
    }
    let mut out = Vec::new();
    e.drain(&mut out);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::NewAppOutpacesPredecessor)
        .expect("outpaces");
    assert_eq!((f.app_id.as_str(), f.team.as_str()), ("a2", "ux"));
    assert!(
        f.explanation.contains("App A2") && f.explanation.contains("4.0x"),
        "{}",
        f.explanation
    );
    assert!(f.detected_at.0 - (T0 + onset * MIN) <= 5 * MIN);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::NovelPattern)
        .expect("metronome");
    assert_eq!(f.app_id, "c");
    assert!(f.explanation.contains("every 3.0 s"), "{}", f.explanation);
    let mut news: Vec<_> = out
        .iter()
        .filter(|f| f.kind == Kind::NewConsumer)
        .map(|f| f.app_id.as_str())
        .collect();
    news.sort();
    assert_eq!(news, vec!["a2", "c"]);
    assert!(
        !kinds(&out).contains(&Kind::UndeclaredPredecessor),
        "a2 declares its predecessor"
    );
}

#[test]
fn a_grant_unused_for_the_whole_period_is_reported_once_the_stream_covers_it() {
    let mut e = engine();
    let day = 1440 * MIN;
    let mut used = ev(T0, "pay-api", "b", "10.0.0.2", 200, 1);
    used.key_fingerprint = "b".repeat(64).into();
    let quiet = ev(T0 + 89 * day, "pay-api", "a", "10.0.0.1", 200, 2);
    for i in [&used, &quiet] {
        e.ingest(i);
    }
    e.advance(Timestamp(T0 + 89 * day + 120 * MIN));
    let mut out = Vec::new();
    e.drain(&mut out);
    assert!(
        !kinds(&out).contains(&Kind::UnusedGrant),
        "used 89 days ago: {out:#?}"
    );
    e.advance(Timestamp(T0 + 91 * day));
    e.advance(Timestamp(T0 + 91 * day + 120 * MIN));
    e.drain(&mut out);
    let f = out
        .iter()
        .find(|f| f.kind == Kind::UnusedGrant)
        .expect("unused grant");
    assert_eq!(
        (f.key_id.as_str(), f.api_id.as_str(), f.team.as_str()),
        ("kb", "pay-api", "ux")
    );
    assert!(
        f.explanation.contains("no call to it in 90 days"),
        "{}",
        f.explanation
    );
}

#[test]
fn errors_are_judged_once_the_configured_error_history_is_learned() {
    // A minute of history, then a retry storm: the defaults want an hour of error ratios and stay silent; the
    // demo's short history (one minute, rates judged from the first) raises the storm within minutes.
    let storm_after = |cfg: Config| {
        let mut e = engine_with(cfg);
        steady(&mut e, 0, 1, 20, |_, _| {});
        for i in &retry_storm(1, 6) {
            e.ingest(i);
        }
        e.advance(Timestamp(T0 + 8 * MIN));
        let mut out = Vec::new();
        e.drain(&mut out);
        out
    };
    let out = storm_after(Config::default());
    assert!(!kinds(&out).contains(&Kind::RetryStorm), "{out:#?}");
    // The second time with a band so wide that the storm's rate stays in it: its retries, learned then, must not
    // become their own baseline.
    for band in ["", "min_band_fraction = 10.0\n"] {
        let short = Config::parse(
            &format!(
                "[baseline]\nmin_days = 0\n{band}[spike]\nsustain_minutes = 2\nmin_error_history_minutes = 1\n"
            ),
            "demo.toml",
        )
        .unwrap();
        let out = storm_after(short);
        let f = out
            .iter()
            .find(|f| f.kind == Kind::RetryStorm)
            .unwrap_or_else(|| panic!("retry storm with {band:?}: {out:#?}"));
        assert!(f.detected_at.0 - (T0 + MIN) <= 3 * MIN, "{f:#?}");
        assert!(
            !kinds(&out).contains(&Kind::ClientBug) && !kinds(&out).contains(&Kind::Flood),
            "{out:#?}"
        );
    }
}

#[test]
fn a_new_stream_is_a_novel_pattern_but_a_crowd_of_new_sources_raises_none_per_source() {
    let mut e = engine();
    steady(&mut e, 0, DAYS3, 20, |_, _| {});
    // `n` local workloads, new to the anonymous rates API, each calling it `per_min` times a minute from `from`.
    let streams = |names: &[String], from: i64, minutes: i64, per_min: i64| {
        let mut all = Vec::new();
        for m in from..from + minutes {
            for s in 0..per_min {
                for (j, name) in names.iter().enumerate() {
                    let ts = T0 + m * MIN + s * MIN / per_min + j as i64 * 1_000;
                    let mut i = ev(ts, "rates", "", "10.0.0.9", 200, ts as u64);
                    i.client_comm = name.clone().into();
                    i.client_cgroup = "/bots".into();
                    all.push(i);
                }
            }
        }
        all
    };
    let mut all = streams(&["scraper".to_string()], DAYS3, 10, 5);
    let bots: Vec<String> = (0..80).map(|n| format!("bot-{n:03}")).collect();
    all.extend(streams(&bots, DAYS3 + 30, 15, 5));
    all.sort_by_key(|i| i.ts);
    for i in &all {
        e.ingest(i);
    }
    let mut out = Vec::new();
    e.drain(&mut out);
    let novel: Vec<&str> = out
        .iter()
        .filter(|f| f.kind == Kind::NovelPattern)
        .map(|f| f.workload.as_str())
        .collect();
    assert!(novel.contains(&"scraper /bots"), "{out:#?}");
    assert!(novel.iter().all(|w| !w.starts_with("bot-")), "{novel:#?}");
}
