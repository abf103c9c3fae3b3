//! observer: eBPF HTTP traffic observer with business context. The binary (`main.rs`) is a thin CLI over these
//! modules; benches and integration tests use them directly.
#![warn(clippy::undocumented_unsafe_blocks)]

#[forbid(unsafe_code)]
pub mod agent;
#[forbid(unsafe_code)]
pub mod cgroups;
#[forbid(unsafe_code)]
pub mod clock;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod courtesy;
#[forbid(unsafe_code)]
pub mod enrich;
#[forbid(unsafe_code)]
pub mod event;
#[forbid(unsafe_code)]
pub mod flow;
#[forbid(unsafe_code)]
pub mod http;
#[forbid(unsafe_code)]
pub mod insights;
#[forbid(unsafe_code)]
pub mod kube;
// Unsafe code only where the kernel interface needs it: `loader` (if_nametoindex, setrlimit, prctl) and `reader`
// (the ring buffer's mappings), every block with a SAFETY comment. Every other module forbids it.
pub mod loader;
#[forbid(unsafe_code)]
pub mod metrics;
#[forbid(unsafe_code)]
pub mod origin;
#[forbid(unsafe_code)]
pub mod origin_join;
#[forbid(unsafe_code)]
pub mod privileges;
pub mod reader;
#[forbid(unsafe_code)]
pub mod registry;
#[forbid(unsafe_code)]
pub mod shared_str;
#[forbid(unsafe_code)]
pub mod sink;
#[forbid(unsafe_code)]
pub mod ui;
#[forbid(unsafe_code)]
pub mod units;
