//! The application / API-key registry: model, loading and validation with line numbers, matching, importers,
//! fingerprints and hot reload. `enrich` joins each event with it.
mod cli;
mod fingerprint;
mod glob;
mod import_kong;
mod import_openapi;
mod load;
mod matching;
mod model;
mod route;
mod watch;
mod yaml;

pub use cli::{run, KeySecretArgs, RegistryAction, RegistryArgs, RegistryCommand, DEFAULT_KEY_SECRET_FILE};
pub use fingerprint::{key_suffix, write_hex, KeySecret, SecretError};
pub use load::{load_file, load_str, Loaded, Problem, Problems, RegistryError};
pub use matching::{strip_port, Snapshot, OVERFLOW_ROUTE};
pub use model::*;
pub use route::{infer_template, RouteTemplate};
pub use watch::{LiveRegistry, ReloadOutcome, ReloadStats, Watcher, POLL_INTERVAL};
