//! Novelty: `new_consumer` (an application's first call to an API), `undeclared_predecessor` (a new consumer of an
//! API that an established application of the same team calls, with no predecessor declared) and `novel_pattern`
//! (a stream not in the baseline: a new client's sustained traffic to an anonymous API, a
//! metronome-regular client that was not regular before, a known client calling several routes it never called).
//! Clients that arrive with a crowd (as many clients first seen within a novelty window as a flood has sources)
//! raise no novel_pattern: each would repeat, once per source, what the API's flood diagnosis says about them all.
use super::config::{minutes_us, Config, MINUTE_US};
use super::context::Context;
use super::finding::{round2, Kind, Observation, Severity, Tracker};
use super::state::{ApiState, ClientState};
use crate::event::Timestamp;

/// A client seen for the first time on `api_id` after learning.
pub fn new_client(
    cfg: &Config,
    ctx: &Context,
    api: &ApiState,
    api_id: &str,
    app_id: &str,
    now: Timestamp,
    tracker: &mut Tracker,
) {
    if app_id.is_empty() {
        return;
    }
    let every = minutes_us(cfg.general.update_every_minutes);
    let mut o = Observation::new(Kind::NewConsumer, Severity::Info, api_id);
    o.app_id = app_id.to_string();
    o.team = ctx.api_owner(api_id).to_string();
    o.explanation = format!(
        "{} (team {}) called {} for the first time",
        ctx.app_name(app_id),
        ctx.app_team(app_id),
        ctx.api_name(api_id)
    );
    tracker.observe(now, o, every);
    if ctx.in_succession(app_id) {
        return;
    }
    let team = ctx.app_team(app_id);
    let Some(sibling) = ctx
        .team_apps(team, app_id)
        .find(|a| api.clients.get(&a.id).is_some_and(|c| c.in_baseline))
    else {
        return;
    };
    let mut o = Observation::new(Kind::UndeclaredPredecessor, Severity::Info, api_id)
        .with("established_app", sibling.id.as_str());
    o.app_id = app_id.to_string();
    o.team = team.to_string();
    o.explanation = format!(
        "{} started calling {}, which {} of the same team already calls; if it replaces {}, declare `predecessor: \
         {}` in the registry so its rate is compared with its predecessor's",
        ctx.app_name(app_id),
        ctx.api_name(api_id),
        sibling.name,
        sibling.name,
        sibling.id
    );
    tracker.observe(now, o, every);
}

/// Coefficient of variation and mean of the inter-arrival times of `arrivals` (µs), when there are enough.
fn regularity(arrivals: &std::collections::VecDeque<i64>, n: usize) -> Option<(f64, f64)> {
    if arrivals.len() < n {
        return None;
    }
    let gaps: Vec<f64> = arrivals
        .iter()
        .zip(arrivals.iter().skip(1))
        .map(|(a, b)| (b - a) as f64)
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    if mean <= 0.0 {
        return None;
    }
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    Some((var.sqrt() / mean, mean / 1e6))
}

/// Judges minute `m` for each client of `api`.
pub fn judge(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &mut ApiState,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
) {
    let n = &cfg.novelty;
    let every = minutes_us(cfg.general.update_every_minutes);
    let anonymous = ctx.api_is_anonymous(api_id);
    let window = n.window_minutes as i64;
    // A crowd: as many clients first seen within the window as a flood has sources. They stay its members.
    let recent = |c: &ClientState| c.first_seen.0 > (m - window) * MINUTE_US;
    if api.clients.values().filter(|c| recent(c)).count() >= cfg.spike.flood_min_sources as usize {
        for c in api.clients.values_mut().filter(|c| recent(c)) {
            c.crowd = true;
        }
    }
    for (id, c) in api.clients.iter_mut() {
        c.window.push_back((m, c.minute.count));
        while c.window.front().is_some_and(|&(w, _)| w <= m - window) {
            c.window.pop_front();
        }
        c.new_routes.retain(|_, &mut first| first > m - window);
        let regular = regularity(&c.arrivals, n.metronome_arrivals)
            .filter(|&(cv, mean_s)| cv < n.metronome_cv && mean_s <= 300.0)
            .filter(|_| c.minute.count > 0);
        let learning = now < c.learn_until;
        if learning && c.in_baseline {
            c.regular |= regular.is_some();
        }
        if !learning && !c.in_baseline {
            // Accepted as normal after its own learning period, with the regularity it has now.
            c.in_baseline = true;
            c.regular = regular.is_some();
        }
        if learning && c.in_baseline || c.crowd {
            continue;
        }
        let Some(o) = pattern(cfg, ctx, api_id, id, c, regular, anonymous) else {
            continue;
        };
        let mut o = o;
        o.app_id = if c.workload.is_empty() || ctx.app(id).is_some() {
            id.clone()
        } else {
            String::new()
        };
        o.workload = c.workload.clone();
        o.team = ctx.api_owner(api_id).to_string();
        tracker.observe(now, o, every);
    }
}

fn pattern(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    id: &str,
    c: &ClientState,
    regular: Option<(f64, f64)>,
    anonymous: bool,
) -> Option<Observation> {
    let n = &cfg.novelty;
    let who = if ctx.app(id).is_some() {
        ctx.app_name(id).to_string()
    } else {
        format!("workload {}", c.workload)
    };
    let api_name = ctx.api_name(api_id);
    let recent: u32 = c.window.iter().map(|w| w.1).sum();
    let since = Timestamp(
        c.first_seen
            .0
            .max(c.window.front().map_or(0, |w| w.0 * MINUTE_US)),
    );
    let anon = if anonymous { "anonymous " } else { "" };
    let first = if c.in_baseline {
        ""
    } else {
        ", a client that never called it before"
    };
    if let Some((cv, interval)) = regular.filter(|_| !c.regular) {
        let mut o = Observation::new(Kind::NovelPattern, Severity::Warning, api_id)
            .with("pattern", "metronome")
            .with("interval_s", round2(interval))
            .with("interval_cv", round2(cv))
            .with("requests_in_window", recent);
        o.since = Some(since);
        o.explanation = format!(
            "{anon}{api_name} has had a metronome-regular stream from {who}: one call every {interval:.1} s \
             (variation {:.0}% over the last {} calls), {recent} calls in {} min{first}",
            cv * 100.0,
            n.metronome_arrivals,
            n.window_minutes
        );
        return Some(o);
    }
    // On keyed APIs a newcomer is a new_consumer (valid key) or a governance finding (no key, unknown or
    // ungranted key): a second finding on the same stream would only repeat it.
    if !c.in_baseline && anonymous && recent >= n.min_stream_requests {
        let mut o = Observation::new(Kind::NovelPattern, Severity::Warning, api_id)
            .with("pattern", "new_stream")
            .with("requests_in_window", recent);
        o.since = Some(c.first_seen);
        o.explanation = format!(
            "{anon}{api_name} receives a stream from {who}, which never called it before: {recent} calls in {} min",
            n.window_minutes
        );
        return Some(o);
    }
    if c.in_baseline && c.new_routes.len() >= n.new_routes {
        let mut o = Observation::new(Kind::NovelPattern, Severity::Info, api_id)
            .with("pattern", "new_routes")
            .with("new_routes", c.new_routes.len());
        o.since = Some(since);
        o.explanation = format!(
            "{who} called {} routes of {api_name} it never called before within {} min",
            c.new_routes.len(),
            n.window_minutes
        );
        return Some(o);
    }
    None
}
