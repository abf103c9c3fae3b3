//! Insights: findings API owners act on (a new application outpacing its predecessor, novel patterns, the cause of
//! a spike, governance breaches), from one engine over a stream with explicit stream time, so the agent, the
//! fleet-wide runner and an offline replay raise the same findings for the same traffic.
pub mod baseline;
pub mod cli;
pub mod config;
pub mod context;
pub mod decode;
pub mod engine;
pub mod finding;
pub mod fleet;
pub mod governance;
pub mod input;
pub mod list;
pub mod live;
pub mod notify;
pub mod novelty;
pub mod out;
pub mod scenarios;
pub mod spike;
pub mod state;
pub mod successor;

pub use config::Config;
pub use engine::Engine;
pub use finding::{Finding, Kind, Severity, Status};
pub use input::Input;
#[cfg(test)]
mod tests;
