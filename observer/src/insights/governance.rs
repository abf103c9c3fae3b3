//! Governance findings from what actually happened: keys used outside their grant, unknown keys, keys shared with
//! other workloads, keyless (shadow) consumers of keyed APIs, undocumented routes (all raised on the event that shows
//! them) and grants left unused (judged once an hour of stream time).
use serde_json::json;

use super::config::Config;
use super::context::Context;
use super::finding::{Kind, Observation, Severity, Tracker};
use super::input::Input;
use super::state::{FastMap, State};
use crate::event::{AttributedBy, KeyState, Timestamp};

/// Calls counted per open governance subject, for the findings' evidence.
#[derive(Debug, Default)]
pub struct Counts(FastMap<String, u64>);

impl Counts {
    fn bump(&mut self, kind: Kind, subject: &[&str]) -> u64 {
        let mut key = String::from(kind.as_str());
        for s in subject {
            key.push('|');
            key.push_str(s);
        }
        let n = self.0.entry(key).or_default();
        *n += 1;
        *n
    }
}

/// The per-event checks. `learning`: the engine has not yet seen a whole learning period.
#[allow(clippy::too_many_arguments)]
pub fn on_event(
    cfg: &Config,
    ctx: &Context,
    state: &mut State,
    counts: &mut Counts,
    tracker: &mut Tracker,
    i: &Input,
    learning: bool,
) {
    let every = super::config::minutes_us(cfg.general.update_every_minutes);
    let api = i.api_id.as_ref();
    let fp = i.key_fingerprint.as_ref();
    let workload = i.workload();
    let who = if workload.is_empty() {
        i.src_ip.to_string()
    } else {
        workload.clone()
    };
    let api_name = ctx.api_name(api);
    if !fp.is_empty() {
        state
            .keys
            .entry(fp.to_string())
            .or_default()
            .last_used
            .insert(api.to_string(), i.ts);
    }
    let key = ctx.key(fp);
    let key_id = key.map_or("", |k| k.id.as_str());
    let key_app = key.map_or("", |k| k.application.as_str());
    match i.key_state {
        KeyState::Expired
        | KeyState::Revoked
        | KeyState::NotYetValid
        | KeyState::NotGrantedForApi => {
            let n = counts.bump(Kind::KeyOutsideGrant, &[api, fp]);
            let severity = if i.key_state == KeyState::Revoked {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let mut o = Observation::new(Kind::KeyOutsideGrant, severity, api)
                .with("key_state", i.key_state.as_str())
                .with("calls", n)
                .with("route", i.route.as_ref());
            o.key_id = key_id.to_string();
            o.key_fingerprint = fp.to_string();
            o.app_id = key_app.to_string();
            o.workload = workload.clone();
            o.team = ctx.app_team(key_app).to_string();
            o.explanation = format!(
                "key {} of {} is {} for {api_name} and was used {n} time(s), last from {who} on {} {}",
                if key_id.is_empty() { fp } else { key_id },
                ctx.app_name(key_app),
                i.key_state.as_str().replace('_', " "),
                i.method,
                i.route
            );
            tracker.observe(i.ts, o, every);
        }
        KeyState::Unknown => {
            let n = counts.bump(Kind::UnknownKey, &[api, fp]);
            let mut o = Observation::new(Kind::UnknownKey, Severity::Warning, api)
                .with("calls", n)
                .with("route", i.route.as_ref());
            o.key_fingerprint = fp.to_string();
            o.workload = workload.clone();
            o.team = ctx.api_owner(api).to_string();
            o.explanation = format!(
                "a key the registry does not know (fingerprint {}...) called {api_name} {n} time(s), last from \
                 {who} on {} {}",
                fp.get(..12).unwrap_or(fp),
                i.method,
                i.route
            );
            tracker.observe(i.ts, o, every);
        }
        KeyState::None if i.attributed_by == AttributedBy::None && ctx.api_is_keyed(api) => {
            let group = if workload.is_empty() {
                "remote clients"
            } else {
                workload.as_str()
            };
            let n = counts.bump(Kind::ShadowConsumer, &[api, group]);
            let mut o = Observation::new(Kind::ShadowConsumer, Severity::Warning, api)
                .with("calls", n)
                .with("route", i.route.as_ref());
            o.workload = group.to_string();
            o.team = ctx.api_owner(api).to_string();
            o.explanation = format!(
                "{group} called {api_name}, which requires a key, {n} time(s) without one and matched no \
                 registered application (last {} {} from {})",
                i.method, i.route, i.src_ip
            );
            tracker.observe(i.ts, o, every);
        }
        _ => {}
    }
    if let Some(k) = key {
        key_shared(cfg, ctx, state, counts, tracker, i, learning, k, &workload);
    }
    if !api.is_empty() && ctx.route_undocumented(api, &i.method, &i.path) == Some(true) {
        let n = counts.bump(Kind::UndocumentedRoute, &[api, &i.route]);
        let mut o = Observation::new(Kind::UndocumentedRoute, Severity::Info, api)
            .with("calls", n)
            .with("method", i.method.as_ref());
        o.route = i.route.to_string();
        o.app_id = i.app_id.to_string();
        o.team = ctx.api_owner(api).to_string();
        o.explanation = format!(
            "{} {} on {api_name} is in neither the registry's routes nor its OpenAPI document; {n} call(s), last \
             from {}",
            i.method,
            i.route,
            if i.app_id.is_empty() { who.as_str() } else { ctx.app_name(&i.app_id) }
        );
        tracker.observe(i.ts, o, every);
    }
}

/// A key used by a workload its application's selectors do not match, or (for applications without selectors)
/// from a process name it was never used from while learning.
#[allow(clippy::too_many_arguments)]
fn key_shared(
    cfg: &Config,
    ctx: &Context,
    state: &mut State,
    counts: &mut Counts,
    tracker: &mut Tracker,
    i: &Input,
    learning: bool,
    key: &crate::registry::Key,
    workload: &str,
) {
    if i.client_comm.is_empty() && i.client_cgroup.is_empty() {
        return;
    }
    let Some(app) = ctx.app(&key.application) else {
        return;
    };
    let reason = if !app.workload.is_empty() {
        if app.workload.iter().any(|s| {
            // A Kubernetes selector needs the client's pod, which the insights input does not carry: it is
            // not judged here rather than judged wrong.
            s.uses_kubernetes() || s.matches(&i.client_comm, &i.client_cgroup, None)
        }) {
            return;
        }
        "none of its application's workload selectors matches it"
    } else {
        let comms = &mut state
            .keys
            .entry(i.key_fingerprint.to_string())
            .or_default()
            .comms;
        if learning || comms.is_empty() {
            comms.insert(i.client_comm.to_string());
            return;
        }
        if comms.contains(i.client_comm.as_ref()) {
            return;
        }
        "it was never used from that process before"
    };
    let n = counts.bump(Kind::KeyShared, &[&key.id, workload]);
    let mut o = Observation::new(Kind::KeyShared, Severity::Warning, &i.api_id)
        .with("calls", n)
        .with("reason", reason);
    o.key_id = key.id.clone();
    o.key_fingerprint = key.fingerprint.clone();
    o.app_id = app.id.clone();
    o.workload = workload.to_string();
    o.team = app.team.clone();
    o.explanation = format!(
        "key {} of {} was used {n} time(s) by workload {workload}, and {reason}",
        key.id, app.name
    );
    tracker.observe(
        i.ts,
        o,
        super::config::minutes_us(cfg.general.update_every_minutes),
    );
}

/// Grants valid for `unused_grant_days` with no call under them, over a stream that covers that period.
pub fn unused_grants(
    cfg: &Config,
    ctx: &Context,
    state: &State,
    tracker: &mut Tracker,
    now: Timestamp,
) {
    let period = (cfg.governance.unused_grant_days * 86_400e6) as i64;
    let Some(started) = state.started else {
        return;
    };
    if now.0 - started.0 < period {
        return;
    }
    let since = Timestamp(now.0 - period);
    for key in &ctx.registry.keys {
        let usage = state.keys.get(&key.fingerprint);
        for g in &key.grants {
            if key.state(Some(&g.api), now) != KeyState::Valid
                || g.window.granted_at.is_some_and(|t| t > since)
                || key.window.granted_at.is_some_and(|t| t > since)
            {
                continue;
            }
            let last = usage.and_then(|u| u.last_used.get(&g.api)).copied();
            if last.is_some_and(|t| t >= since) {
                continue;
            }
            let days = cfg.governance.unused_grant_days;
            let mut o = Observation::new(Kind::UnusedGrant, Severity::Info, &g.api).with(
                "last_used",
                last.map_or(json!(null), |t| json!(t.to_rfc3339())),
            );
            o.key_id = key.id.clone();
            o.key_fingerprint = key.fingerprint.clone();
            o.app_id = key.application.clone();
            o.team = ctx.app_team(&key.application).to_string();
            o.explanation = format!(
                "key {} of {} is granted {} (by {}) but made no call to it in {days} days; consider revoking the \
                 grant",
                key.id,
                ctx.app_name(&key.application),
                ctx.api_name(&g.api),
                if g.window.granted_by.is_empty() { "unknown" } else { &g.window.granted_by }
            );
            tracker.observe(now, o, i64::MAX);
        }
    }
}
