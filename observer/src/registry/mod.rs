//! The application / API-key registry: the model (`model`), loading and validation with line numbers (`load`, one
//! submodule per section, reading files and variables through a `Source`), bounded line-tracking YAML (`yaml`),
//! API and workload matching (`matching`, `route`, `glob`), the OpenAPI and Kong importers, key fingerprints and hot
//! reload (`watch`). `enrich` joins each event with it; the agent runs it from `RegistryArgs`.
mod api_index;
mod cli;
mod fingerprint;
mod glob;
mod import_kong;
mod import_openapi;
mod key_cache;
mod load;
mod matching;
mod model;
mod route;
mod watch;
mod yaml;

// The public surface for `run` and the ClickHouse registry writer; not all of it is used inside this crate yet.
#[allow(unused_imports)]
pub use cli::{
    import_kong, import_openapi, run, Imported, KeySecretArgs, RegistryAction, RegistryArgs,
    RegistryCommand, DEFAULT_KEY_SECRET_FILE,
};
#[allow(unused_imports)]
pub use fingerprint::{key_suffix, write_hex, KeySecret, SecretError};
pub use glob::Glob;
/// The importers' text-to-registry steps, for callers that hold the text (the fuzz targets).
pub use import_kong::import as import_kong_text;
pub use import_openapi::{parse_spec as parse_openapi, to_registry_yaml as openapi_registry_yaml};
pub use key_cache::{Fingerprinted, MAX_CACHED_KEYS};
#[allow(unused_imports)]
pub use load::{load_file, load_str, load_with, Loaded, Problem, Problems, RegistryError, Source};
#[allow(unused_imports)]
pub use matching::{strip_port, ApiText, AppText, ServerEnd, Snapshot, OVERFLOW_ROUTE};
#[allow(unused_imports)]
pub use model::*;
#[allow(unused_imports)]
pub use route::{infer_template, RouteTemplate};
#[allow(unused_imports)]
pub use watch::{LiveRegistry, ReloadOutcome, ReloadStats, Watcher, POLL_INTERVAL};
