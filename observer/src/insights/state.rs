//! What the engine learns and keeps between runs (baselines per API and client, known sources, key use, open
//! findings), and its persistence as one JSON file in the state directory, replaced atomically.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::baseline::{Ewma, Profile};
use super::finding::Finding;
use crate::event::Timestamp;

/// Hash map and set with a fast (non-cryptographic) hasher: the per-event path does several lookups.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Format version of the state file; a file of another version is ignored (and the engine relearns).
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "insights-state.json";
/// Most sources remembered per API as "seen in the baseline".
pub const MAX_KNOWN_SOURCES: usize = 200_000;
/// Most clients (applications or workloads) tracked per API.
pub const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {what} insights state {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("insights state {path} is not valid: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Stream time of the first event ever seen (learning runs from here).
    pub started: Option<Timestamp>,
    pub apis: FastMap<String, ApiState>,
    /// Use of each key, by fingerprint.
    pub keys: FastMap<String, KeyUse>,
    /// Findings open when the state was saved.
    pub open: Vec<Finding>,
}

/// Per-minute figures being accumulated for an API (not persisted).
#[derive(Debug, Default)]
pub struct ApiMinute {
    pub count: u32,
    pub errors: u32,
    pub keyless: u32,
    /// Repeats of a request whose previous attempt got a server error or no response.
    pub retries: u32,
    pub sources: FastSet<u64>,
    pub new_sources: u32,
    pub routes: FastSet<u64>,
}

/// Spike-diagnosis memory of an API between minutes (not persisted).
#[derive(Debug, Default)]
pub struct Episodes {
    /// Consecutive minutes above the rate band / with anomalous errors, and the minute each run began.
    pub rate_run: u32,
    pub rate_start: i64,
    pub err_run: u32,
    /// Start of the error episode: anomalous minutes less than 5 minutes apart belong to one episode.
    pub err_start: i64,
    /// Consecutive minutes with retries above their usual share, and the minute that run began.
    pub retry_run: u32,
    pub retry_start: i64,
    /// The last minute with anomalous errors.
    pub last_err: Option<i64>,
    /// Whether errors were anomalous when the current rate run began (or in the 5 minutes before).
    pub errors_before_rate: bool,
    /// (source, request identity) -> last time seen and whether that attempt failed, for repeats and retries.
    pub recent: FastMap<(u64, u64), (i64, bool)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ApiState {
    pub profile: Profile,
    pub errors: Ewma,
    pub retries: Ewma,
    pub sources: Ewma,
    pub known_sources: FastSet<u64>,
    pub clients: FastMap<String, ClientState>,
    #[serde(skip)]
    pub minute: ApiMinute,
    #[serde(skip)]
    pub episodes: Episodes,
}

/// Per-minute figures of one client of an API (not persisted).
#[derive(Debug, Default)]
pub struct ClientMinute {
    pub count: u32,
    pub errors: u32,
    pub four: u32,
    pub repeats: u32,
    pub retries: u32,
    pub new_ua: u32,
    /// One user agent the client had not used before, for explanations.
    pub new_ua_example: String,
}

/// One client (application, or local workload without one) of an API.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ClientState {
    pub profile: Profile,
    pub four: Ewma,
    pub routes: FastSet<u64>,
    /// User agents by when the client first used them.
    pub user_agents: FastMap<u64, Timestamp>,
    pub first_seen: Timestamp,
    /// Its traffic to the API is part of the baseline (seen for a whole learning period).
    pub in_baseline: bool,
    /// Its arrivals were metronome-regular while it was learned.
    pub regular: bool,
    /// Until when its routes, user agents and regularity are learned rather than judged.
    pub learn_until: Timestamp,
    /// The last minute it called the API. A client silent for an hour is absent (retired, or migrated to a
    /// successor), not quiet: its profile is frozen rather than taught zeros.
    pub last_active: i64,
    /// Workload (`comm cgroup`) of its last local call, for explanations.
    pub workload: String,
    /// It arrived with a crowd (see novelty.rs): judged with the crowd by the API's detectors, not on its own.
    #[serde(default)]
    pub crowd: bool,
    #[serde(skip)]
    pub minute: ClientMinute,
    #[serde(skip)]
    pub arrivals: VecDeque<i64>,
    /// (minute, requests) of the last minutes, for novelty windows.
    #[serde(skip)]
    pub window: VecDeque<(i64, u32)>,
    /// Routes not in the baseline, by the minute they were first called.
    #[serde(skip)]
    pub new_routes: FastMap<u64, i64>,
    /// Consecutive minutes above its own band, and the minute that run began.
    #[serde(skip)]
    pub burst_run: u32,
    #[serde(skip)]
    pub burst_start: i64,
    /// Consecutive minutes above the predecessor's rate.
    #[serde(skip)]
    pub outpace_run: u32,
}

/// Where and for what a key was used.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyUse {
    /// Process names (client_comm) the key was used from while learning.
    pub comms: FastSet<String>,
    /// Last use per API.
    pub last_used: FastMap<String, Timestamp>,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads the state saved in `dir`; Ok(None) when there is none or it is of another format version.
    pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
        let path = Self::path(dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        let state: State =
            serde_json::from_slice(&text).map_err(|source| StateError::Invalid { path, source })?;
        Ok((state.version == STATE_VERSION).then_some(state))
    }

    /// Writes the state to `dir` (created if needed) through a temporary file and a rename.
    pub fn save(&mut self, dir: &Path) -> Result<(), StateError> {
        self.version = STATE_VERSION;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|source| StateError::Invalid {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        Ok(())
    }
}
