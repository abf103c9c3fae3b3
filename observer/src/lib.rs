//! observer: eBPF HTTP traffic observer with business context. The binary (`main.rs`) is a thin CLI over these
//! modules; benches and integration tests use them directly.
pub mod agent;
pub mod cgroups;
pub mod clock;
pub mod config;
pub mod enrich;
pub mod event;
pub mod flow;
pub mod http;
pub mod insights;
pub mod kube;
pub mod loader;
pub mod metrics;
pub mod origin;
pub mod origin_join;
pub mod reader;
pub mod registry;
pub mod sink;
pub mod ui;
pub mod units;
