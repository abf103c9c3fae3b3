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
use super::state::{ApiState, ClientState, MAX_KNOWN_SOURCES};
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

/// The figures of minute `m` of `api` next to its baselines.
fn figures(cfg: &Config, api: &ApiState, m: i64) -> Minute {
    let s = &cfg.spike;
    let b = &cfg.baseline;
    let mn = &api.minute;
    let count = mn.count as f64;
    let share = |n: u32| if mn.count > 0 { n as f64 / count } else { 0.0 };
    let exp = api.profile.expected(m, b);
    let err_ratio = share(mn.errors);
    let base_err = api.errors.value;
    let retry_share = share(mn.retries);
    let base_retry = api.retries.value;
    Minute {
        count,
        expected: exp.map(|e| e.mean),
        upper: exp.map(|e| e.upper),
        err_ratio,
        base_err,
        retry_share,
        base_retry,
        rate_anomalous: exp.is_some_and(|e| count >= b.min_volume_per_minute && count > e.upper),
        err_anomalous: api.errors.n >= s.min_error_history_minutes
            && mn.errors >= s.min_errors
            && err_ratio >= s.min_error_ratio.max(s.error_factor * base_err),
        retries_elevated: count >= b.min_volume_per_minute
            && retry_share >= s.retry_repeat_share.max(base_retry + s.repeat_excess),
    }
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
    let x = figures(cfg, api, m);
    let ep = &mut api.episodes;
    if x.err_anomalous {
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
    if x.rate_anomalous {
        if ep.rate_run == 0 {
            ep.rate_start = m;
            ep.errors_before_rate = ep.last_err.is_some_and(|e| e >= m - 5);
        }
        ep.rate_run += 1;
    } else {
        ep.rate_run = 0;
    }
    // A client above its own band: judged per client, since one application's burst can hide in a busy API's band.
    for c in api.clients.values_mut() {
        let above = c.minute.count as f64 >= b.min_volume_per_minute
            && c.profile
                .expected(m, b)
                .is_some_and(|e| c.minute.count as f64 > e.upper);
        if above {
            if c.burst_run == 0 {
                c.burst_start = m;
            }
            c.burst_run += 1;
        } else {
            c.burst_run = 0;
        }
    }
    let scene = Scene {
        cfg,
        ctx,
        api_id,
        api: &*api,
        x: &x,
        m,
    };
    let ep = &api.episodes;
    // Errors first, then the same clients repeating the same requests: a retry storm, whatever the rate does.
    let retry = ep.retry_run >= s.sustain_minutes
        && ep
            .last_err
            .is_some_and(|l| l >= m - 5 && ep.err_start <= ep.retry_start);
    let mut found = Vec::new();
    if retry {
        found.push(scene.retry_storm());
    } else {
        if ep.rate_run >= s.sustain_minutes {
            found.extend(scene.flood());
        }
        found.extend(scene.client_bugs());
    }
    // Errors sustained one minute longer than a rate rise must be: a blip spans at most three minutes.
    if ep.err_run > s.sustain_minutes && !x.rate_anomalous && !x.retries_elevated {
        found.extend(scene.backend_failure());
    }
    let every = minutes_us(cfg.general.update_every_minutes);
    for o in found {
        tracker.observe(now, o, every);
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

/// What every diagnosis of minute `m` of an API reads.
struct Scene<'a> {
    cfg: &'a Config,
    ctx: &'a Context,
    api_id: &'a str,
    api: &'a ApiState,
    x: &'a Minute,
    m: i64,
}

impl Scene<'_> {
    /// A finding on the API, owned by its team, with the minute's figures as evidence.
    fn observation(&self, kind: Kind, severity: Severity) -> Observation {
        let x = self.x;
        let mut o = Observation::new(kind, severity, self.api_id)
            .with("rate_per_min", x.count)
            .with("baseline_per_min", x.expected.map(round2))
            .with("band_upper_per_min", x.upper.map(round2))
            .with("ratio", x.expected.map(|e| round2(x.count / e.max(1.0))))
            .with("error_ratio", round2(x.err_ratio))
            .with("baseline_error_ratio", round2(x.base_err))
            .with("retry_share", round2(x.retry_share))
            .with("baseline_retry_share", round2(x.base_retry));
        o.team = self.ctx.api_owner(self.api_id).to_string();
        o
    }

    fn api_name(&self) -> &str {
        self.ctx.api_name(self.api_id)
    }

    fn retry_storm(&self) -> Observation {
        let (cfg, ctx, x, api) = (self.cfg, self.ctx, self.x, self.api);
        let mut retrying: Vec<(&str, u32)> = api
            .clients
            .iter()
            .filter(|(_, c)| {
                c.minute.count > 0
                    && c.minute.retries as f64 / c.minute.count as f64
                        >= cfg.spike.retry_repeat_share
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
        let mut o = self
            .observation(Kind::RetryStorm, Severity::Critical)
            .with(
                "errors_since",
                Timestamp(ep.err_start * MINUTE_US).to_rfc3339(),
            )
            .with(
                "retrying_apps",
                json!(retrying.iter().map(|r| r.0).collect::<Vec<_>>()),
            )
            .since(ep.err_start);
        o.explanation = format!(
            "retry storm on {}: {} of its {} requests at {} repeat a failed request of the same client within {} s, \
             after its errors rose to {} (baseline {}) at {}; rate {:.1}x its usual; retrying: {}",
            self.api_name(),
            pct(x.retry_share),
            x.count,
            hhmm(self.m),
            cfg.spike.repeat_window_secs,
            pct(x.err_ratio),
            pct(x.base_err),
            hhmm(ep.err_start),
            x.count / x.expected.unwrap_or(1.0).max(1.0),
            if names.is_empty() { "unattributed clients".to_string() } else { names.join(", ") }
        );
        o
    }

    fn flood(&self) -> Option<Observation> {
        let (s, x) = (&self.cfg.spike, self.x);
        let mn = &self.api.minute;
        let sources = mn.sources.len() as f64;
        let usual = self.api.sources.value;
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
        let mut o = self
            .observation(Kind::Flood, Severity::Critical)
            .with("distinct_sources", sources)
            .with("baseline_distinct_sources", round2(usual))
            .with("new_source_share", round2(new_share))
            .with("keyless_or_unknown_key_share", round2(keyless))
            .with("routes", mn.routes.len())
            .since(self.api.episodes.rate_start);
        o.explanation = format!(
            "flood on {}: {} requests in a minute ({:.1}x its baseline {:.0}) from {} distinct sources (usually \
             {:.0}), {} of them never seen before, {} of requests without a key or with an unknown key, over {} \
             routes",
            self.api_name(),
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

    /// client_bug for each application of the API in a sustained burst of its own repeated or rejected requests,
    /// with no server errors in the 5 minutes before it began (those make it a retry).
    fn client_bugs(&self) -> Vec<Observation> {
        let s = &self.cfg.spike;
        let last_err = self.api.episodes.last_err;
        let mut found = Vec::new();
        for (id, c) in &self.api.clients {
            if c.burst_run < s.sustain_minutes || last_err.is_some_and(|l| l >= c.burst_start - 5) {
                continue;
            }
            let n = c.minute.count.max(1) as f64;
            let repeats = c.minute.repeats as f64 / n;
            let four = c.minute.four as f64 / n;
            let identical = repeats >= s.client_bug_repeat_share;
            let rejected = four >= s.client_bug_4xx_share && four >= c.four.value + s.repeat_excess;
            if identical || rejected {
                found.push(self.client_bug(id, c, repeats, four));
            }
        }
        found
    }

    /// client_bug for client `id` of the API.
    fn client_bug(&self, id: &str, c: &ClientState, repeats: f64, four: f64) -> Observation {
        let (cfg, ctx) = (self.cfg, self.ctx);
        let n = c.minute.count.max(1) as f64;
        let usual = c.profile.expected(self.m, &cfg.baseline).map(|e| e.mean);
        let new_ua = c.minute.new_ua as f64 / n;
        let mut o = self
            .observation(Kind::ClientBug, Severity::Warning)
            .with("app_rate_per_min", c.minute.count)
            .with("app_baseline_per_min", usual.map(round2))
            .with("app_repeat_share", round2(repeats))
            .with("app_4xx_share", round2(four))
            .with("new_user_agent_share", round2(new_ua))
            .with("new_user_agent", c.minute.new_ua_example.as_str())
            .since(c.burst_start);
        o.app_id = id.to_string();
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
            "client bug: {} sends {} calls a minute to {} (usually {:.0}, since {}); {} repeat a request it sent \
             within {} s and {} are answered 4xx, with no server errors before{ua}",
            ctx.app_name(id),
            c.minute.count,
            self.api_name(),
            usual.unwrap_or(0.0),
            hhmm(c.burst_start),
            pct(repeats),
            cfg.spike.repeat_window_secs,
            pct(four),
        );
        o
    }

    /// backend_failure when the errors reach most of the API's active consumers.
    fn backend_failure(&self) -> Option<Observation> {
        let x = self.x;
        let active: Vec<_> = self
            .api
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
        if share < self.cfg.spike.backend_consumer_share {
            return None;
        }
        let ep = &self.api.episodes;
        let mut o = self
            .observation(Kind::BackendFailure, Severity::Critical)
            .with("consumers_failing", failing)
            .with("consumers_active", active.len())
            .since(ep.err_start);
        o.explanation = format!(
            "backend failure of {}: {} of requests at {} got a server error or no response (baseline {}) since \
             {}, for {failing} of its {} active consumers, at its usual rate ({} vs {:.0} a minute)",
            self.api_name(),
            pct(x.err_ratio),
            hhmm(self.m),
            pct(x.base_err),
            hhmm(ep.err_start),
            active.len(),
            x.count,
            x.expected.unwrap_or(x.count),
        );
        Some(o)
    }
}

/// Trains the API's baselines with minute `m`; anomalous figures stay out of what they would distort.
fn learn(cfg: &Config, api: &mut ApiState, m: i64, x: &Minute) {
    let b = &cfg.baseline;
    api.profile.learn(m, x.count, b);
    let slow = b.alpha / 10.0;
    if !x.err_anomalous && x.count > 0.0 {
        api.errors.learn(x.err_ratio, slow);
    }
    // Retries of an error episode or above their usual share stay out of it, as anomalous errors stay out of the
    // error ratio: else the first minutes of a storm teach it (they weigh most while little is learned).
    if !x.rate_anomalous && !x.err_anomalous && !x.retries_elevated && x.count > 0.0 {
        api.retries.learn(x.retry_share, slow);
    }
    if !x.rate_anomalous {
        api.sources.learn(api.minute.sources.len() as f64, b.alpha);
        if api.known_sources.len() < MAX_KNOWN_SOURCES {
            api.known_sources.extend(api.minute.sources.iter().copied());
        }
    }
}
