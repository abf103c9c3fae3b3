//! Labelled synthetic traffic for evaluating the detectors: a registry of teams, APIs, applications and keys,
//! several days of seasonal baseline with noise, then each scenario with its onset and the decoys that must stay
//! silent. Everything (rates, noise, daily shape, scenario times, sizes and order) varies with the seed.
mod traffic;

pub mod eval;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::finding::Kind;
use crate::event::{Event, Timestamp};
use crate::registry::{KeySecret, Registry};

pub use traffic::Traffic;

/// Minutes and days in microseconds.
pub const MIN_US: i64 = 60_000_000;
pub const DAY_US: i64 = 1440 * MIN_US;
/// Monday 2026-03-02 00:00 UTC: the first baseline day.
pub const ORIGIN_US: i64 = 1_772_409_600_000_000;
/// The secret the scenario registry's key fingerprints are made with.
pub const SECRET: &[u8] = b"observer-scenarios";

/// What a labelled interval should raise: a finding of `kind` on `api_id` (and `app_id` when set), or nothing
/// (a decoy, `kind` None).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Label {
    pub scenario: &'static str,
    pub kind: Option<Kind>,
    pub api_id: &'static str,
    pub app_id: &'static str,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// One scenario or decoy placed in time, with its seeded size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    pub what: What,
    pub start: i64,
    pub end: i64,
    /// Scenario strength (a factor, a failure probability or a count; see `traffic`).
    pub size: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Successor,
    UndeclaredSuccessor,
    Metronome,
    RetryStorm,
    ClientBug,
    Flood,
    BackendFailure,
    RevokedKey,
    UnknownKey,
    SharedKey,
    ShadowConsumer,
    UndocumentedRoute,
    FlashCrowd,
    LevelShift,
    ErrorBlip,
}

/// Everything one seed produces.
pub struct Generated {
    pub seed: u64,
    pub registry_yaml: String,
    pub registry: Registry,
    pub labels: Vec<Label>,
    pub placed: Vec<Placed>,
    /// End of the baseline days (scenarios start after it).
    pub baseline_end: Timestamp,
    pub end: Timestamp,
    pub traffic: Traffic,
}

/// Baseline days before the scenario days.
pub const BASELINE_DAYS: i64 = 4;
pub const SCENARIO_DAYS: i64 = 2;

const REGISTRY: &str = include_str!("registry.yaml");

impl Generated {
    /// The scenario set for `seed`.
    pub fn new(seed: u64) -> Self {
        let secret = KeySecret::from_bytes(SECRET);
        let yaml = registry_yaml(&secret);
        let registry = crate::registry::load_str(&yaml, std::path::Path::new("."), &secret)
            .unwrap_or_else(|p| panic!("scenario registry is valid: {p:?}"))
            .registry;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let placed = place(&mut rng);
        let labels = placed.iter().flat_map(labels).collect();
        let baseline_end = ORIGIN_US + BASELINE_DAYS * DAY_US;
        let end = baseline_end + SCENARIO_DAYS * DAY_US;
        Generated {
            seed,
            registry_yaml: yaml,
            traffic: Traffic::new(seed, &registry, &placed, ORIGIN_US, end),
            registry,
            labels,
            placed,
            baseline_end: Timestamp(baseline_end),
            end: Timestamp(end),
        }
    }

    /// The events of the whole run, minute by minute in time order, handed to `f`.
    pub fn for_each_event(&mut self, mut f: impl FnMut(&Event)) {
        while let Some(batch) = self.traffic.next_minute() {
            for e in batch {
                f(e);
            }
        }
    }
}

/// The scenario registry with every `FP(raw)` replaced by the raw key's fingerprint.
fn registry_yaml(secret: &KeySecret) -> String {
    let mut out = String::new();
    let mut rest = REGISTRY;
    while let Some(i) = rest.find("FP(") {
        out.push_str(&rest[..i]);
        let close = rest[i..].find(')').expect("FP( is closed") + i;
        out.push_str(&secret.fingerprint_hex(&rest.as_bytes()[i + 3..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The raw key of an application in the scenarios (its fingerprint is in the registry).
pub fn raw_key(app: &str) -> &'static str {
    match app {
        "checkout-v1" => "sk_checkout_v1",
        "checkout-v2" => "sk_checkout_v2",
        "checkout-next" => "sk_checkout_next",
        "mobile-app" => "sk_mobile",
        "partner-portal" => "sk_partner",
        "warehouse-sync" => "sk_warehouse",
        "reporting" => "sk_reporting",
        "legacy-batch" => "sk_legacy",
        _ => "sk_unknown_4f9d",
    }
}

/// Places each scenario and decoy once over the scenario days, at seeded times, in seeded order.
fn place(rng: &mut ChaCha8Rng) -> Vec<Placed> {
    use What::*;
    let mut day_items = vec![
        Successor,
        RetryStorm,
        ClientBug,
        Flood,
        BackendFailure,
        FlashCrowd,
        ErrorBlip,
    ];
    let mut any_items = vec![
        UndeclaredSuccessor,
        Metronome,
        RevokedKey,
        UnknownKey,
        SharedKey,
        ShadowConsumer,
        UndocumentedRoute,
    ];
    day_items.shuffle(rng);
    any_items.shuffle(rng);
    let base = ORIGIN_US + BASELINE_DAYS * DAY_US;
    let mut out = Vec::new();
    // Daytime slots: 07:30, 10:30, 13:30, 16:30 on each scenario day (+- 20 min); the level shift goes last, at
    // 18:30 on the second day, because it lasts to the end.
    let mut day_slots: Vec<i64> = (0..SCENARIO_DAYS)
        .flat_map(|d| [7 * 60 + 30, 10 * 60 + 30, 13 * 60 + 30, 16 * 60 + 30].map(|m| d * 1440 + m))
        .collect();
    day_slots.truncate(day_items.len());
    for (what, slot) in day_items.into_iter().zip(day_slots) {
        let jitter = rng.random_range(-20..=20);
        out.push(sized(rng, what, base + (slot + jitter) * MIN_US));
    }
    out.push(sized(
        rng,
        LevelShift,
        base + (1440 + 18 * 60 + 30) * MIN_US,
    ));
    // Other slots: every 6 h from 02:00 (+- 60 min), beside the daytime ones.
    for (i, what) in any_items.into_iter().enumerate() {
        let slot = 120 + i as i64 * 360 + rng.random_range(-60..=60);
        out.push(sized(rng, what, base + slot * MIN_US));
    }
    out.sort_by_key(|p| p.start);
    out
}

fn sized(rng: &mut ChaCha8Rng, what: What, start: i64) -> Placed {
    use What::*;
    let (minutes, size) = match what {
        Successor => (rng.random_range(45..=90), rng.random_range(3.6..6.0)),
        UndeclaredSuccessor => (rng.random_range(60..=120), rng.random_range(0.1..0.3)),
        Metronome => (rng.random_range(60..=120), rng.random_range(1.0..10.0)),
        RetryStorm => (rng.random_range(20..=40), rng.random_range(0.3..0.6)),
        ClientBug => (rng.random_range(20..=60), rng.random_range(4.0..8.0)),
        Flood => (rng.random_range(20..=40), rng.random_range(4.0..10.0)),
        BackendFailure => (rng.random_range(15..=40), rng.random_range(0.2..0.6)),
        RevokedKey | UnknownKey | SharedKey | ShadowConsumer | UndocumentedRoute => {
            (rng.random_range(10..=30), rng.random_range(10.0..50.0))
        }
        FlashCrowd => (rng.random_range(30..=60), rng.random_range(2.5..4.0)),
        LevelShift => (24 * 60, rng.random_range(1.6..2.2)),
        ErrorBlip => (1, rng.random_range(20.0..90.0)),
    };
    let end = if what == ErrorBlip {
        start + (size * 1e6) as i64
    } else {
        start + minutes * MIN_US
    };
    let _ = minutes;
    Placed {
        what,
        start,
        end: end.min(ORIGIN_US + (BASELINE_DAYS + SCENARIO_DAYS) * DAY_US),
        size,
    }
}

/// The findings a placed scenario should raise (none for a decoy).
fn labels(p: &Placed) -> Vec<Label> {
    use What::*;
    let l = |scenario, kind: Option<Kind>, api_id, app_id| Label {
        scenario,
        kind,
        api_id,
        app_id,
        start: Timestamp(p.start),
        end: Timestamp(p.end),
    };
    match p.what {
        Successor => vec![
            l(
                "successor",
                Some(Kind::NewAppOutpacesPredecessor),
                "payments-api",
                "checkout-v2",
            ),
            l(
                "successor",
                Some(Kind::NewConsumer),
                "payments-api",
                "checkout-v2",
            ),
        ],
        UndeclaredSuccessor => vec![
            l(
                "undeclared_successor",
                Some(Kind::NewConsumer),
                "payments-api",
                "checkout-next",
            ),
            l(
                "undeclared_successor",
                Some(Kind::UndeclaredPredecessor),
                "payments-api",
                "checkout-next",
            ),
        ],
        Metronome => vec![
            l(
                "metronome",
                Some(Kind::NovelPattern),
                "rates-api",
                "warehouse-sync",
            ),
            l(
                "metronome",
                Some(Kind::NewConsumer),
                "rates-api",
                "warehouse-sync",
            ),
        ],
        RetryStorm => vec![l("retry_storm", Some(Kind::RetryStorm), "orders-api", "")],
        ClientBug => vec![l(
            "client_bug",
            Some(Kind::ClientBug),
            "payments-api",
            "mobile-app",
        )],
        Flood => vec![l("flood", Some(Kind::Flood), "rates-api", "")],
        BackendFailure => vec![l(
            "backend_failure",
            Some(Kind::BackendFailure),
            "inventory-api",
            "",
        )],
        RevokedKey => vec![
            l(
                "revoked_key",
                Some(Kind::KeyOutsideGrant),
                "inventory-api",
                "legacy-batch",
            ),
            l(
                "revoked_key",
                Some(Kind::NewConsumer),
                "inventory-api",
                "legacy-batch",
            ),
        ],
        UnknownKey => vec![l("unknown_key", Some(Kind::UnknownKey), "payments-api", "")],
        SharedKey => vec![l(
            "shared_key",
            Some(Kind::KeyShared),
            "payments-api",
            "checkout-v1",
        )],
        ShadowConsumer => vec![l(
            "shadow_consumer",
            Some(Kind::ShadowConsumer),
            "orders-api",
            "",
        )],
        UndocumentedRoute => vec![l(
            "undocumented_route",
            Some(Kind::UndocumentedRoute),
            "payments-api",
            "",
        )],
        FlashCrowd => vec![l("flash_crowd", None, "", "")],
        LevelShift => vec![l("level_shift", None, "", "")],
        ErrorBlip => vec![l("error_blip", None, "", "")],
    }
}

/// Draws from a seeded generator (used by `traffic`).
pub(crate) fn rng_for(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
