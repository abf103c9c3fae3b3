//! The engine: feeds each input to the per-event detectors, accumulates per-minute figures per API and client,
//! and when stream time passes a minute judges it with the per-minute detectors, trains
//! the baselines with it and closes findings whose condition ended. Time is the events' time only.
use std::path::Path;

use super::config::{minutes_us, Config, MINUTE_US};
use super::context::Context;
use super::finding::{Finding, Kind, Tracker};
use super::governance::{self, Counts};
use super::input::{fnv64, Input};
use super::state::{ApiState, ClientState, State, StateError, MAX_CLIENTS};
use super::{novelty, spike, successor};
use crate::event::{KeyState, Timestamp};
use crate::registry::Registry;

/// Most user agents remembered per client.
const MAX_USER_AGENTS: usize = 1000;

pub struct Engine {
    cfg: Config,
    ctx: Context,
    state: State,
    tracker: Tracker,
    counts: Counts,
    /// The minute being accumulated (minutes since the epoch).
    minute: Option<i64>,
    /// The newest event time seen.
    now: Timestamp,
    next_hourly: i64,
}

impl Engine {
    pub fn new(cfg: Config, registry: Registry) -> Self {
        Engine {
            cfg,
            ctx: Context::new(registry),
            state: State::default(),
            tracker: Tracker::default(),
            counts: Counts::default(),
            minute: None,
            now: Timestamp(i64::MIN),
            next_hourly: i64::MIN,
        }
    }

    /// Continues from a saved state (baselines, known sources, key use, open findings).
    pub fn restore(&mut self, mut state: State) {
        self.tracker.restore(std::mem::take(&mut state.open));
        self.state = state;
    }

    /// Loads the state saved in `dir`, if any; returns whether there was one.
    pub fn restore_from(&mut self, dir: &Path) -> Result<bool, StateError> {
        Ok(match State::load(dir)? {
            Some(s) => {
                self.restore(s);
                true
            }
            None => false,
        })
    }

    /// Saves the state to `dir`.
    pub fn save(&mut self, dir: &Path) -> Result<(), StateError> {
        self.state.open = self.tracker.open_findings().cloned().collect();
        let r = self.state.save(dir);
        self.state.open.clear();
        r
    }

    /// Uses a new registry version from now on.
    pub fn set_registry(&mut self, registry: Registry) {
        self.ctx = Context::new(registry);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The findings' versions produced so far (opened, updated, closed), in order.
    pub fn drain(&mut self, out: &mut Vec<Finding>) {
        self.tracker.drain(out);
    }

    pub fn open_findings(&self) -> impl Iterator<Item = &Finding> {
        self.tracker.open_findings()
    }

    fn learning_us(&self) -> i64 {
        (self.cfg.general.learning_hours * 3600e6) as i64
    }

    /// Whether the engine is still in its first learning period at `t`.
    fn learning_at(&self, t: Timestamp) -> bool {
        self.state
            .started
            .is_none_or(|s| t.0 - s.0 < self.learning_us())
    }

    /// History read before the stream starts (the fleet runner's 1h rollup): `requests` calls of `app` ("" for all
    /// callers together) to `api` in the hour starting at minute `hour_minute`, spread evenly over its minutes.
    /// Trains the same baselines the minutes of a stream would, and counts as time the engine has seen.
    pub fn warm_hour(
        &mut self,
        api: &str,
        app: &str,
        hour_minute: i64,
        requests: u64,
        errors: u64,
    ) {
        let start = Timestamp(hour_minute * MINUTE_US);
        self.state.started = Some(self.state.started.map_or(start, |s| s.min(start)));
        let b = &self.cfg.baseline;
        let api = self.state.apis.entry(api.to_string()).or_default();
        let per_min = requests as f64 / 60.0;
        if app.is_empty() {
            for m in hour_minute..hour_minute + 60 {
                api.profile.learn(m, per_min, b);
            }
            if requests > 0 {
                api.errors
                    .learn(errors as f64 / requests as f64, b.alpha / 10.0);
            }
            return;
        }
        if !api.clients.contains_key(app) && api.clients.len() >= MAX_CLIENTS {
            return;
        }
        let c = api
            .clients
            .entry(app.to_string())
            .or_insert_with(|| ClientState {
                first_seen: start,
                in_baseline: true,
                learn_until: start,
                ..Default::default()
            });
        c.first_seen = c.first_seen.min(start);
        c.last_active = c.last_active.max(hour_minute + 59);
        for m in hour_minute..hour_minute + 60 {
            c.profile.learn(m, per_min, b);
        }
    }

    /// History of a key's use (the fleet runner's `key_use_1d`): its last call to `api`, and since when the history
    /// goes back (`covered_from`), so `unused_grant` can judge grants over days the stream has not replayed.
    pub fn warm_key_use(&mut self, fingerprint: &str, api: &str, last: Timestamp) {
        let u = self.state.keys.entry(fingerprint.to_string()).or_default();
        let e = u.last_used.entry(api.to_string()).or_insert(last);
        *e = (*e).max(last);
    }

    /// The stream's history reaches back to `t` (for judgements over days: learning, unused grants).
    pub fn history_from(&mut self, t: Timestamp) {
        self.state.started = Some(self.state.started.map_or(t, |s| s.min(t)));
    }

    /// Stream time moves to `t` (an event's time, or an idle agent's clock): every minute before `t`'s is judged.
    /// Events arrive in time order give or take a few seconds; one older than the minute being accumulated counts
    /// in it.
    pub fn advance(&mut self, t: Timestamp) {
        if t > self.now {
            self.now = t;
        }
        let Some(mut cur) = self.minute else {
            // No event yet (a fleet runner over a quiet window): what needs none is still judged.
            self.hourly(self.now);
            return;
        };
        let target = self.now.0.div_euclid(MINUTE_US);
        if target - cur > i64::from(self.cfg.general.max_gap_minutes) {
            // Missing data: judge the minute at hand, forget the gap.
            self.close_minute(cur);
            self.minute = Some(target);
            for api in self.state.apis.values_mut() {
                api.episodes = Default::default();
            }
            return;
        }
        while cur < target {
            self.close_minute(cur);
            cur += 1;
        }
        self.minute = Some(cur);
    }

    /// Feeds one exchange.
    pub fn ingest(&mut self, i: &Input) {
        let ts = i.ts;
        if self.state.started.is_none() {
            self.state.started = Some(ts);
        }
        if self.minute.is_none() {
            self.minute = Some(ts.0.div_euclid(MINUTE_US));
        }
        if ts > self.now {
            self.advance(ts);
        }
        let learning = self.learning_at(ts);
        governance::on_event(
            &self.cfg,
            &self.ctx,
            &mut self.state,
            &mut self.counts,
            &mut self.tracker,
            i,
            learning,
        );
        if i.api_id.is_empty() {
            return;
        }
        let minute = self.minute.unwrap_or(0);
        let learning_us = self.learning_us();
        let started = self.state.started.unwrap_or(ts);
        let api_id = i.api_id.as_ref();
        if !self.state.apis.contains_key(api_id) {
            self.state
                .apis
                .insert(api_id.to_string(), ApiState::default());
        }
        let api = self.state.apis.get_mut(api_id).expect("inserted above");
        let mn = &mut api.minute;
        mn.count += 1;
        let error = i.is_error();
        mn.errors += error as u32;
        mn.keyless += matches!(i.key_state, KeyState::None | KeyState::Unknown) as u32;
        let src = i.source_hash();
        if mn.sources.insert(src) && !api.known_sources.contains(&src) {
            mn.new_sources += 1;
        }
        let route = fnv64([i.route.as_bytes()]);
        mn.routes.insert(route);
        let window = (self.cfg.spike.repeat_window_secs * 1e6) as i64;
        let prev = api
            .episodes
            .recent
            .insert((src, i.request_identity()), (ts.0, error))
            .filter(|&(t, _)| ts.0 - t <= window);
        let repeat = prev.is_some();
        let retry = prev.is_some_and(|(_, failed)| failed);
        mn.retries += retry as u32;

        let client_id: &str = if !i.app_id.is_empty() {
            &i.app_id
        } else if !i.client_comm.is_empty() || !i.client_cgroup.is_empty() {
            &i.workload()
        } else {
            return;
        };
        let workload;
        let client_id = if i.app_id.is_empty() {
            workload = client_id.to_string();
            workload.as_str()
        } else {
            client_id
        };
        if !api.clients.contains_key(client_id) {
            if api.clients.len() >= MAX_CLIENTS {
                return;
            }
            let learn_until = if learning {
                Timestamp(started.0 + learning_us)
            } else {
                Timestamp(ts.0 + learning_us)
            };
            api.clients.insert(
                client_id.to_string(),
                ClientState {
                    first_seen: ts,
                    in_baseline: learning,
                    learn_until,
                    ..Default::default()
                },
            );
            if !learning {
                novelty::new_client(
                    &self.cfg,
                    &self.ctx,
                    api,
                    api_id,
                    &i.app_id,
                    ts,
                    &mut self.tracker,
                );
            }
        }
        let c = api.clients.get_mut(client_id).expect("inserted above");
        let cm = &mut c.minute;
        cm.count += 1;
        cm.errors += error as u32;
        cm.four += i.is_4xx() as u32;
        cm.repeats += repeat as u32;
        cm.retries += retry as u32;
        let client_learning = ts < c.learn_until;
        if !i.user_agent.is_empty() {
            let ua = fnv64([i.user_agent.as_bytes()]);
            let first = match c.user_agents.get(&ua) {
                Some(t) => *t,
                None if c.user_agents.len() < MAX_USER_AGENTS => {
                    c.user_agents.insert(ua, ts);
                    ts
                }
                None => ts,
            };
            if !client_learning
                && ts.0 - first.0 <= minutes_us(self.cfg.spike.new_user_agent_minutes)
            {
                cm.new_ua += 1;
                if cm.new_ua_example.is_empty() {
                    cm.new_ua_example = i.user_agent.to_string();
                }
            }
        }
        if client_learning {
            c.routes.insert(route);
        } else if !c.routes.contains(&route) {
            c.new_routes.entry(route).or_insert(minute);
        }
        c.arrivals.push_back(ts.0);
        if c.arrivals.len() > self.cfg.novelty.metronome_arrivals {
            c.arrivals.pop_front();
        }
        if c.workload.is_empty() && (!i.client_comm.is_empty() || !i.client_cgroup.is_empty()) {
            c.workload = i.workload();
        }
    }

    /// Judges minute `m` with the per-minute detectors, trains baselines, closes ended findings.
    fn close_minute(&mut self, m: i64) {
        let end = Timestamp((m + 1) * MINUTE_US);
        let cfg = &self.cfg;
        let repeat_us = (cfg.spike.repeat_window_secs * 1e6) as i64;
        for (api_id, api) in self.state.apis.iter_mut() {
            spike::judge(cfg, &self.ctx, api_id, api, m, end, &mut self.tracker);
            successor::judge(cfg, &self.ctx, api_id, api, m, end, &mut self.tracker);
            novelty::judge(cfg, &self.ctx, api_id, api, m, end, &mut self.tracker);
            // A predecessor whose successor calls the API keeps the profile it had: that is what the successor is
            // compared with, not the trickle (or nothing) it sends once replaced. One whose traffic is not part of
            // the baseline yet (not seen for a whole learning period) keeps learning: a successor started beside it
            // must not freeze a profile of its first minutes.
            let replaced: Vec<String> = api
                .clients
                .keys()
                .filter_map(|id| self.ctx.app(id)?.predecessor.clone())
                .collect();
            for (id, c) in api.clients.iter_mut() {
                let n = c.minute.count as f64;
                if c.minute.count > 0 {
                    c.last_active = m;
                }
                let frozen = replaced.contains(id) && c.in_baseline;
                if m - c.last_active <= 60 && !frozen {
                    c.profile.learn(m, n, &cfg.baseline);
                }
                if c.minute.count > 0 {
                    let slow = cfg.baseline.alpha / 10.0;
                    c.four.learn(c.minute.four as f64 / n, slow);
                }
                c.minute = Default::default();
            }
            api.minute = Default::default();
            api.episodes
                .recent
                .retain(|_, &mut (t, _)| end.0 - t <= repeat_us);
        }
        let rate_close = minutes_us(cfg.spike.close_after_minutes);
        let event_close = minutes_us(cfg.governance.close_after_minutes);
        self.tracker.sweep(end, |k| match k {
            Kind::UnusedGrant => 2 * 60 * MINUTE_US,
            k if k.per_event() => event_close,
            _ => rate_close,
        });
        self.hourly(end);
    }

    /// Hourly judgements over days (unused grants), at most once an hour of stream time.
    fn hourly(&mut self, end: Timestamp) {
        if end.0 >= self.next_hourly {
            self.next_hourly = end.0 + 60 * MINUTE_US;
            governance::unused_grants(&self.cfg, &self.ctx, &self.state, &mut self.tracker, end);
        }
    }
}
