//! Learned normal: per-minute request counts by hour of day and hour of week (exponentially weighted mean and mean
//! absolute deviation, trained with clipped values so anomalies do not teach themselves), and slow averages of
//! ratios (error ratio, repeat share). Plain data, serialized into the state directory.
use serde::{Deserialize, Serialize};

use super::config::Baseline as Cfg;

const HOURS_PER_WEEK: i64 = 168;

/// Figures of one hour slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// Minutes learned.
    pub n: u32,
    pub mean: f32,
    /// Mean absolute deviation from the mean.
    pub dev: f32,
}

impl Slot {
    fn learn(&mut self, x: f64, alpha: f64, winsor_k: f64) {
        let mean = self.mean as f64;
        let dev = self.dev as f64;
        let x = if self.n >= 30 {
            x.min(mean + winsor_k * dev.max(mean.sqrt()).max(1.0))
        } else {
            x
        };
        let a = alpha.max(1.0 / (self.n as f64 + 1.0));
        let new_mean = mean + a * (x - mean);
        self.dev = (dev + a * ((x - mean).abs() - dev)) as f32;
        self.mean = new_mean as f32;
        self.n = self.n.saturating_add(1);
    }

    /// Upper edge of the normal band.
    fn upper(&self, cfg: &Cfg) -> f64 {
        let mean = self.mean as f64;
        let spread = (1.25 * self.dev as f64).max(mean.sqrt());
        (mean + cfg.band_k * spread).max(mean * (1.0 + cfg.min_band_fraction))
    }
}

/// What a profile expects for one minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    /// Mean per-minute count at this hour.
    pub mean: f64,
    /// Above this the minute is outside the band (widest of this, the previous and the next hour).
    pub upper: f64,
}

/// Per-minute counts of one series (an API, or one client of an API) by hour of day and hour of week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    day: Vec<Slot>,
    week: Vec<Slot>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            day: vec![Slot::default(); 24],
            week: vec![Slot::default(); HOURS_PER_WEEK as usize],
        }
    }
}

/// Hour since the epoch of a minute index (minutes since the Unix epoch).
fn hour(minute: i64) -> i64 {
    minute.div_euclid(60)
}

impl Profile {
    /// Learns the count of minute `minute` (minutes since the epoch).
    pub fn learn(&mut self, minute: i64, count: f64, cfg: &Cfg) {
        let h = hour(minute);
        self.day[h.rem_euclid(24) as usize].learn(count, cfg.alpha, cfg.winsor_k);
        self.week[h.rem_euclid(HOURS_PER_WEEK) as usize].learn(count, cfg.alpha, cfg.winsor_k);
    }

    /// The slot figures for hour `h` (since the epoch): hour of week once it holds `min_weeks` of minutes, else hour
    /// of day once it holds `min_days`; None while neither does.
    fn slot(&self, h: i64, cfg: &Cfg) -> Option<&Slot> {
        let w = &self.week[h.rem_euclid(HOURS_PER_WEEK) as usize];
        if w.n >= cfg.min_weeks * 60 {
            return Some(w);
        }
        let d = &self.day[h.rem_euclid(24) as usize];
        (d.n >= cfg.min_days * 60).then_some(d)
    }

    /// What this series is expected to do in minute `minute`, or None before enough history.
    pub fn expected(&self, minute: i64, cfg: &Cfg) -> Option<Expected> {
        let h = hour(minute);
        let here = self.slot(h, cfg)?;
        let upper = [h - 1, h, h + 1]
            .into_iter()
            .filter_map(|x| self.slot(x, cfg))
            .map(|s| s.upper(cfg))
            .fold(0.0, f64::max);
        Some(Expected {
            mean: here.mean as f64,
            upper,
        })
    }
}

/// A slow exponentially weighted average of a ratio or a count (error ratio, repeat share, distinct sources).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub n: u32,
    pub value: f64,
}

impl Ewma {
    pub fn learn(&mut self, x: f64, alpha: f64) {
        let a = alpha.max(1.0 / (self.n as f64 + 1.0));
        self.value += a * (x - self.value);
        self.n = self.n.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::config::Config;

    #[test]
    fn hour_of_day_figures_follow_a_daily_cycle_and_bound_noise() {
        let cfg = Config::default().baseline;
        let mut p = Profile::default();
        // Three days: 10/min at night (hours 0-7), 100/min by day, +-10% alternating noise.
        for m in 0..3 * 1440i64 {
            let base = if (m / 60) % 24 < 8 { 10.0 } else { 100.0 };
            let noise = if m % 2 == 0 { 1.1 } else { 0.9 };
            p.learn(m, base * noise, &cfg);
            if m == 1440 {
                assert!(p.expected(m, &cfg).is_none(), "one day is not enough");
            }
        }
        let noon = 3 * 1440 + 12 * 60;
        let e = p.expected(noon, &cfg).expect("warm after two days");
        assert!((e.mean - 100.0).abs() < 10.0, "{e:?}");
        assert!(e.upper > 110.0 && e.upper < 400.0, "{e:?}");
        let night = 3 * 1440 + 3 * 60;
        let e = p.expected(night, &cfg).unwrap();
        assert!(e.mean < 12.0 && e.upper < 40.0, "{e:?}");
        // 07:xx is bounded by 08:xx's band too (the morning ramp).
        let seven = 3 * 1440 + 7 * 60 + 30;
        assert!(p.expected(seven, &cfg).unwrap().upper > 110.0);
    }

    #[test]
    fn clipped_training_keeps_a_spike_from_teaching_itself() {
        let cfg = Config::default().baseline;
        let mut p = Profile::default();
        for m in 0..3 * 1440i64 {
            p.learn(m, 50.0, &cfg);
        }
        let before = p.expected(3 * 1440, &cfg).unwrap();
        for m in 3 * 1440..3 * 1440 + 10 {
            p.learn(m, 5000.0, &cfg);
        }
        let after = p.expected(3 * 1440 + 10, &cfg).unwrap();
        assert!(after.mean < before.mean * 1.6, "{before:?} {after:?}");
    }
}
