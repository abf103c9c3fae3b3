//! Spike diagnosis per API, once a minute: when the rate or the error ratio leaves its baseline, decide whether it
//! is a retry storm (errors first, then the same clients repeating the same requests), a client bug (one
//! application's burst of identical or 4xx-answered requests, no server errors before), a flood (many new sources
//! without valid keys, over many routes) or a backend failure (errors for all consumers, the rate in its band).
//! A rise with none of these signatures (a flash crowd of known clients, a level shift after a deploy, the daily
//! ramp) and errors shorter than the sustain time (a blip) raise nothing.
use serde_json::json;

use super::config::{minutes_us, Config, MINUTE_US};
use super::context::Context;
use super::finding::{round2, Kind, Observation, Severity, Tracker};
use super::state::{ApiState, MAX_KNOWN_SOURCES};
use crate::event::Timestamp;

/// The minute's figures for an API next to its baseline.
struct Minute {
    count: f64,
    expected: Option<f64>,
    upper: Option<f64>,
    err_ratio: f64,
    base_err: f64,
    /// Share of the minute's requests that repeat a failed request of the same client within the window.
    retry_share: f64,
    base_retry: f64,
    rate_anomalous: bool,
    err_anomalous: bool,
    retries_elevated: bool,
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p > 0.0 && p < 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

fn hhmm(minute: i64) -> String {
    Timestamp(minute * MINUTE_US).to_rfc3339()[11..16].to_string()
}

/// Judges minute `m` of `api` (before it is learned), then trains the API's baselines with it.
pub fn judge(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &mut ApiState,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
) {
    let s = &cfg.spike;
    let b = &cfg.baseline;
    let mn = &api.minute;
    let count = mn.count as f64;
    let exp = api.profile.expected(m, b);
    let rate_anomalous = exp.is_some_and(|e| count >= b.min_volume_per_minute && count > e.upper);
    let err_ratio = if mn.count > 0 {
        mn.errors as f64 / count
    } else {
        0.0
    };
    let base_err = api.errors.value;
    let err_anomalous = api.errors.n >= 60
        && mn.errors >= s.min_errors
        && err_ratio >= s.min_error_ratio.max(s.error_factor * base_err);
    let retry_share = if mn.count > 0 {
        mn.retries as f64 / count
    } else {
        0.0
    };
    let base_retry = api.retries.value;
    let x = Minute {
        count,
        expected: exp.map(|e| e.mean),
        upper: exp.map(|e| e.upper),
        err_ratio,
        base_err,
        retry_share,
        base_retry,
        rate_anomalous,
        err_anomalous,
        retries_elevated: count >= b.min_volume_per_minute
            && retry_share >= s.retry_repeat_share.max(base_retry + s.repeat_excess),
    };
    let ep = &mut api.episodes;
    if err_anomalous {
        if ep.last_err.is_none_or(|l| l < m - 5) {
            ep.err_start = m;
        }
        ep.err_run += 1;
        ep.last_err = Some(m);
    } else {
        ep.err_run = 0;
    }
    if x.retries_elevated {
        if ep.retry_run == 0 {
            ep.retry_start = m;
        }
        ep.retry_run += 1;
    } else {
        ep.retry_run = 0;
    }
    if rate_anomalous {
        if ep.rate_run == 0 {
            ep.rate_start = m;
            ep.errors_before_rate = ep.last_err.is_some_and(|e| e >= m - 5);
        }
        ep.rate_run += 1;
    } else {
        ep.rate_run = 0;
    }
    let every = minutes_us(cfg.general.update_every_minutes);
    // Errors first, then the same clients repeating the same requests: a retry storm, whatever the rate does.
    let retry = ep.retry_run >= s.sustain_minutes
        && ep
            .last_err
            .is_some_and(|l| l >= m - 5 && ep.err_start <= ep.retry_start);
    if retry {
        retry_storm(cfg, ctx, api_id, api, &x, m, now, tracker, every);
    } else if ep.rate_run >= s.sustain_minutes {
        if let Some(o) = flood(cfg, ctx, api_id, api, &x) {
            tracker.observe(now, o.since(api.episodes.rate_start), every);
        } else if !api.episodes.errors_before_rate {
            client_bug(cfg, ctx, api_id, api, &x, m, now, tracker, every);
        }
    }
    // Errors sustained one minute longer than a rate rise must be: a blip spans at most three minutes.
    if api.episodes.err_run > s.sustain_minutes && !rate_anomalous && !x.retries_elevated {
        backend_failure(cfg, ctx, api_id, api, &x, m, now, tracker, every);
    }
    learn(cfg, api, m, &x);
}

trait Since {
    fn since(self, minute: i64) -> Self;
}

impl Since for Observation {
    fn since(mut self, minute: i64) -> Self {
        self.since = Some(Timestamp(minute * MINUTE_US));
        self
    }
}

fn rate_evidence(o: Observation, x: &Minute) -> Observation {
    o.with("rate_per_min", x.count)
        .with("baseline_per_min", x.expected.map(round2))
        .with("band_upper_per_min", x.upper.map(round2))
        .with("ratio", x.expected.map(|e| round2(x.count / e.max(1.0))))
        .with("error_ratio", round2(x.err_ratio))
        .with("baseline_error_ratio", round2(x.base_err))
        .with("retry_share", round2(x.retry_share))
        .with("baseline_retry_share", round2(x.base_retry))
}

#[allow(clippy::too_many_arguments)]
fn retry_storm(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &ApiState,
    x: &Minute,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
    every: i64,
) {
    let mut retrying: Vec<(&str, u32)> = api
        .clients
        .iter()
        .filter(|(_, c)| {
            c.minute.count > 0
                && c.minute.retries as f64 / c.minute.count as f64 >= cfg.spike.retry_repeat_share
        })
        .map(|(id, c)| (id.as_str(), c.minute.retries))
        .collect();
    retrying.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let names: Vec<String> = retrying
        .iter()
        .take(5)
        .map(|(id, n)| format!("{} ({n} retries)", ctx.app_name(id)))
        .collect();
    let ep = &api.episodes;
    let mut o = rate_evidence(
        Observation::new(Kind::RetryStorm, Severity::Critical, api_id),
        x,
    )
    .with(
        "errors_since",
        Timestamp(ep.err_start * MINUTE_US).to_rfc3339(),
    )
    .with(
        "retrying_apps",
        json!(retrying.iter().map(|r| r.0).collect::<Vec<_>>()),
    )
    .since(ep.err_start);
    o.team = ctx.api_owner(api_id).to_string();
    o.explanation = format!(
        "retry storm on {}: {} of its {} requests at {} repeat a failed request of the same client within {} s, \
         after its errors rose to {} (baseline {}) at {}; rate {:.1}x its usual; retrying: {}",
        ctx.api_name(api_id),
        pct(x.retry_share),
        x.count,
        hhmm(m),
        cfg.spike.repeat_window_secs,
        pct(x.err_ratio),
        pct(x.base_err),
        hhmm(ep.err_start),
        x.count / x.expected.unwrap_or(1.0).max(1.0),
        if names.is_empty() { "unattributed clients".to_string() } else { names.join(", ") }
    );
    tracker.observe(now, o, every);
}

fn flood(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &ApiState,
    x: &Minute,
) -> Option<Observation> {
    let s = &cfg.spike;
    let mn = &api.minute;
    let sources = mn.sources.len() as f64;
    let usual = api.sources.value;
    let keyless = mn.keyless as f64 / x.count.max(1.0);
    let new_share = mn.new_sources as f64 / sources.max(1.0);
    let is_flood = sources >= s.flood_min_sources as f64
        && sources >= s.flood_source_factor * usual
        && keyless >= s.flood_keyless_share
        && new_share >= s.flood_new_source_share
        && mn.routes.len() >= s.flood_min_routes;
    if !is_flood {
        return None;
    }
    let mut o = rate_evidence(Observation::new(Kind::Flood, Severity::Critical, api_id), x)
        .with("distinct_sources", sources)
        .with("baseline_distinct_sources", round2(usual))
        .with("new_source_share", round2(new_share))
        .with("keyless_or_unknown_key_share", round2(keyless))
        .with("routes", mn.routes.len());
    o.team = ctx.api_owner(api_id).to_string();
    o.explanation = format!(
        "flood on {}: {} requests in a minute ({:.1}x its baseline {:.0}) from {} distinct sources (usually {:.0}), \
         {} of them never seen before, {} of requests without a key or with an unknown key, over {} routes",
        ctx.api_name(api_id),
        x.count,
        x.count / x.expected.unwrap_or(1.0).max(1.0),
        x.expected.unwrap_or(0.0),
        sources,
        usual,
        pct(new_share),
        pct(keyless),
        mn.routes.len()
    );
    Some(o)
}

#[allow(clippy::too_many_arguments)]
fn client_bug(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &ApiState,
    x: &Minute,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
    every: i64,
) {
    let s = &cfg.spike;
    let excess = x.count - x.expected.unwrap_or(0.0);
    if excess <= 0.0 {
        return;
    }
    let client_excess = |c: &super::state::ClientState| {
        c.minute.count as f64 - c.profile.expected(m, &cfg.baseline).map_or(0.0, |e| e.mean)
    };
    let Some((id, c)) = api
        .clients
        .iter()
        .max_by(|a, b| client_excess(a.1).total_cmp(&client_excess(b.1)))
    else {
        return;
    };
    let share = client_excess(c) / excess;
    let n = c.minute.count.max(1) as f64;
    let repeats = c.minute.repeats as f64 / n;
    let four = c.minute.four as f64 / n;
    let identical = repeats >= s.client_bug_repeat_share;
    let rejected = four >= s.client_bug_4xx_share && four >= c.four.value + s.repeat_excess;
    if share < s.client_bug_top_share || !(identical || rejected) {
        return;
    }
    let usual = c.profile.expected(m, &cfg.baseline).map(|e| e.mean);
    let new_ua = c.minute.new_ua as f64 / n;
    let mut o = rate_evidence(
        Observation::new(Kind::ClientBug, Severity::Warning, api_id),
        x,
    )
    .with("app_rate_per_min", c.minute.count)
    .with("app_baseline_per_min", usual.map(round2))
    .with("share_of_excess", round2(share))
    .with("app_repeat_share", round2(repeats))
    .with("app_4xx_share", round2(four))
    .with("new_user_agent_share", round2(new_ua))
    .with("new_user_agent", c.minute.new_ua_example.as_str())
    .since(api.episodes.rate_start);
    o.app_id = id.clone();
    o.workload = c.workload.clone();
    o.team = ctx.app_team(id).to_string();
    let ua = if new_ua >= 0.5 {
        format!(
            "; {} of its calls carry the new user agent {:?}",
            pct(new_ua),
            c.minute.new_ua_example
        )
    } else {
        String::new()
    };
    o.explanation = format!(
        "client bug: {} sends {} calls a minute to {} (usually {:.0}), {} of the API's excess; {} repeat a request \
         it sent within {} s and {} are answered 4xx, with no server errors before{ua}",
        ctx.app_name(id),
        c.minute.count,
        ctx.api_name(api_id),
        usual.unwrap_or(0.0),
        pct(share.min(1.0)),
        pct(repeats),
        s.repeat_window_secs,
        pct(four),
    );
    tracker.observe(now, o, every);
}

#[allow(clippy::too_many_arguments)]
fn backend_failure(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &ApiState,
    x: &Minute,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
    every: i64,
) {
    let active: Vec<_> = api
        .clients
        .values()
        .filter(|c| c.minute.count >= 3)
        .collect();
    let failing = active
        .iter()
        .filter(|c| c.minute.errors as f64 / c.minute.count as f64 >= 0.5 * x.err_ratio)
        .count();
    let share = if active.is_empty() {
        1.0
    } else {
        failing as f64 / active.len() as f64
    };
    if share < cfg.spike.backend_consumer_share {
        return;
    }
    let ep = &api.episodes;
    let mut o = rate_evidence(
        Observation::new(Kind::BackendFailure, Severity::Critical, api_id),
        x,
    )
    .with("consumers_failing", failing)
    .with("consumers_active", active.len())
    .since(ep.err_start);
    o.team = ctx.api_owner(api_id).to_string();
    o.explanation = format!(
        "backend failure of {}: {} of requests at {} got a server error or no response (baseline {}) since {}, \
         for {failing} of its {} active consumers, at its usual rate ({} vs {:.0} a minute)",
        ctx.api_name(api_id),
        pct(x.err_ratio),
        hhmm(m),
        pct(x.base_err),
        hhmm(ep.err_start),
        active.len(),
        x.count,
        x.expected.unwrap_or(x.count),
    );
    tracker.observe(now, o, every);
}

/// Trains the API's baselines with minute `m`; anomalous figures stay out of what they would distort.
fn learn(cfg: &Config, api: &mut ApiState, m: i64, x: &Minute) {
    let b = &cfg.baseline;
    api.profile.learn(m, x.count, b);
    let slow = b.alpha / 10.0;
    if !x.err_anomalous && x.count > 0.0 {
        api.errors.learn(x.err_ratio, slow);
    }
    if !x.rate_anomalous {
        if x.count > 0.0 {
            api.retries.learn(x.retry_share, slow);
        }
        api.sources.learn(api.minute.sources.len() as f64, b.alpha);
        if api.known_sources.len() < MAX_KNOWN_SOURCES {
            api.known_sources.extend(api.minute.sources.iter().copied());
        }
    }
}
