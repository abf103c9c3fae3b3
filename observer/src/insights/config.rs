//! Every threshold of the insights detectors, in one documented file (`examples/insights.toml`, embedded as the
//! defaults); a user file overrides any subset of it and is checked for unknown settings.
use std::path::Path;

use serde::Deserialize;

/// The embedded defaults: the documented example file itself.
pub const DEFAULTS: &str = include_str!("../../../examples/insights.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read insights config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("insights config {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub general: General,
    pub baseline: Baseline,
    pub successor: Successor,
    pub novelty: Novelty,
    pub spike: Spike,
    pub governance: Governance,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct General {
    pub learning_hours: f64,
    pub update_every_minutes: f64,
    pub max_gap_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub alpha: f64,
    pub min_days: u32,
    pub min_weeks: u32,
    pub band_k: f64,
    pub min_band_fraction: f64,
    pub min_volume_per_minute: f64,
    pub winsor_k: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Successor {
    pub factor: f64,
    pub sustain_minutes: u32,
    pub min_predecessor_per_minute: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Novelty {
    pub min_stream_requests: u32,
    pub window_minutes: u32,
    pub metronome_cv: f64,
    pub metronome_arrivals: usize,
    pub new_routes: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    pub sustain_minutes: u32,
    pub min_error_ratio: f64,
    pub error_factor: f64,
    pub min_errors: u32,
    pub min_error_history_minutes: u32,
    pub repeat_window_secs: f64,
    pub retry_repeat_share: f64,
    pub repeat_excess: f64,
    pub client_bug_repeat_share: f64,
    pub client_bug_4xx_share: f64,
    pub new_user_agent_minutes: f64,
    pub flood_min_sources: u32,
    pub flood_source_factor: f64,
    pub flood_keyless_share: f64,
    pub flood_new_source_share: f64,
    pub flood_min_routes: usize,
    pub backend_consumer_share: f64,
    pub close_after_minutes: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    pub close_after_minutes: f64,
    pub unused_grant_days: f64,
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str(DEFAULTS).expect("the embedded examples/insights.toml is a valid config")
    }
}

/// Microseconds in a minute.
pub const MINUTE_US: i64 = 60_000_000;

pub fn minutes_us(m: f64) -> i64 {
    (m * MINUTE_US as f64) as i64
}

impl Config {
    /// The defaults overridden by the settings of the TOML text `text` (named `path` in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        let mut base: toml::Table = toml::from_str(DEFAULTS).expect("embedded defaults parse");
        let user: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (section, value) in user {
            let (Some(toml::Value::Table(into)), toml::Value::Table(from)) =
                (base.get_mut(&section), value)
            else {
                return Err(invalid(format!(
                    "unknown section [{section}] (sections: general, baseline, successor, novelty, spike, \
                     governance)"
                )));
            };
            for (k, v) in from {
                if !into.contains_key(&k) {
                    return Err(invalid(format!("unknown setting {k:?} in [{section}]")));
                }
                into.insert(k, v);
            }
        }
        let cfg: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    /// Reads a user config file (defaults for everything it does not set).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        let b = &self.baseline;
        if !(b.alpha > 0.0 && b.alpha <= 1.0) {
            return Err(format!(
                "[baseline] alpha must be in (0, 1], got {}",
                b.alpha
            ));
        }
        if self.successor.factor <= 1.0 {
            return Err(format!(
                "[successor] factor must be above 1, got {}",
                self.successor.factor
            ));
        }
        if self.novelty.metronome_arrivals < 3 {
            return Err("[novelty] metronome_arrivals must be at least 3".into());
        }
        if self.spike.sustain_minutes == 0 || self.successor.sustain_minutes == 0 {
            return Err("sustain_minutes must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_is_the_default_and_a_user_file_overrides_a_subset() {
        let d = Config::default();
        assert_eq!(d.successor.factor, 3.0);
        assert_eq!(d.spike.sustain_minutes, 3);
        let c = Config::parse("[successor]\nfactor = 4.5\n", "mine.toml").unwrap();
        assert_eq!(c.successor.factor, 4.5);
        assert_eq!(c.spike, d.spike);
    }

    #[test]
    fn unknown_settings_and_bad_values_are_named() {
        let e = Config::parse("[spike]\nsustain = 3\n", "mine.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("mine.toml: unknown setting \"sustain\" in [spike]"),
            "{e}"
        );
        let e = Config::parse("[spikes]\n", "mine.toml").unwrap_err();
        assert!(e.to_string().contains("unknown section [spikes]"), "{e}");
        let e = Config::parse("[successor]\nfactor = 0.5\n", "m").unwrap_err();
        assert!(e.to_string().contains("factor must be above 1"), "{e}");
        let e = Config::parse("[successor]\nfactor = \"x\"\n", "m").unwrap_err();
        assert!(e.to_string().contains("factor"), "{e}");
    }
}
