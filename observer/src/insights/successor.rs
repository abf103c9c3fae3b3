//! `new_app_outpaces_predecessor`: an application's per-minute rate on an API compared with what its registered
//! predecessor made on that API at the same hour (the predecessor's learned profile), once a minute.
use super::config::{minutes_us, Config, MINUTE_US};
use super::context::Context;
use super::finding::{round2, Kind, Observation, Severity, Tracker};
use super::state::ApiState;
use crate::event::Timestamp;

/// Judges minute `m` for every client of `api` that has a registered predecessor with a learned profile there.
pub fn judge(
    cfg: &Config,
    ctx: &Context,
    api_id: &str,
    api: &mut ApiState,
    m: i64,
    now: Timestamp,
    tracker: &mut Tracker,
) {
    let c = &cfg.successor;
    let mut judged: Vec<(String, String, f64)> = Vec::new();
    for id in api.clients.keys() {
        let Some(pred) = ctx.app(id).and_then(|a| a.predecessor.as_deref()) else {
            continue;
        };
        let Some(expected) = api
            .clients
            .get(pred)
            .and_then(|p| p.profile.expected(m, &cfg.baseline))
        else {
            continue;
        };
        judged.push((id.clone(), pred.to_string(), expected.mean));
    }
    for (id, pred, expected) in judged {
        let client = api.clients.get_mut(&id).expect("judged clients exist");
        let floor = expected.max(c.min_predecessor_per_minute);
        let rate = client.minute.count as f64;
        if rate > c.factor * floor && rate >= cfg.baseline.min_volume_per_minute {
            client.outpace_run += 1;
        } else {
            client.outpace_run = 0;
        }
        if client.outpace_run < c.sustain_minutes {
            continue;
        }
        let ratio = rate / floor;
        let mut o = Observation::new(Kind::NewAppOutpacesPredecessor, Severity::Warning, api_id)
            .with("rate_per_min", rate)
            .with("predecessor", pred.as_str())
            .with("predecessor_baseline_per_min", round2(expected))
            .with("ratio", round2(ratio))
            .with("factor", c.factor);
        o.since = Some(Timestamp((m + 1 - client.outpace_run as i64) * MINUTE_US));
        o.app_id = id.clone();
        o.workload = client.workload.clone();
        o.team = ctx.app_team(&id).to_string();
        o.explanation = format!(
            "the new {} makes {ratio:.1}x the calls to {} that its predecessor {} made at this hour ({:.0} vs {:.0} \
             a minute, for {} minutes)",
            ctx.app_name(&id),
            ctx.api_name(api_id),
            ctx.app_name(&pred),
            rate,
            floor,
            client.outpace_run,
        );
        tracker.observe(now, o, minutes_us(cfg.general.update_every_minutes));
    }
}
