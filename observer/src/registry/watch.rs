//! The live registry: the current `Snapshot` behind an `ArcSwap` (the event path never blocks on reload), hot
//! reload by polling the registry file and the files it references (mtime + size every poll, content hash on change
//! and every 2 s), reload metrics, and change notification for other components.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use sha2::{Digest, Sha256};

use crate::event::Timestamp;

use super::fingerprint::KeySecret;
use super::load::{load_file, RegistryError};
use super::matching::Snapshot;

/// Default poll interval of the watcher.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Content is hashed at least this often even when mtime and size look unchanged.
const HASH_EVERY_POLLS: u64 = 4;

/// Reload metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Generation of the snapshot in use (0 = loaded at start).
    pub generation: u64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads (invalid or unreadable registry) since start.
    pub failures: u64,
    /// The last rejected reload's problems, cleared by the next successful reload.
    pub last_error: Option<String>,
    pub last_reload_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Reloaded { generation: u64 },
    Rejected { error: String },
}

type FileStamp = Option<(SystemTime, u64)>;

#[derive(Debug, Default)]
struct WatchState {
    /// Registry file first, then its dependencies, with the stamps last seen.
    files: Vec<(PathBuf, FileStamp)>,
    /// Hash of the content last attempted (good or bad), so a bad edit is reported once.
    attempted_hash: [u8; 32],
    polls: u64,
}

/// The registry in use, shared by the event path, the watcher and whoever wants to know about changes.
pub struct LiveRegistry {
    current: ArcSwap<Snapshot>,
    path: Option<PathBuf>,
    secret: KeySecret,
    reloads: AtomicU64,
    failures: AtomicU64,
    stats: Mutex<ReloadStats>,
    state: Mutex<WatchState>,
    changes: tokio::sync::watch::Sender<Arc<Snapshot>>,
}

impl std::fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegistry")
            .field("path", &self.path)
            .field("generation", &self.generation())
            .finish()
    }
}

fn stamp(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn stamps(paths: impl IntoIterator<Item = PathBuf>) -> Vec<(PathBuf, FileStamp)> {
    paths
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// SHA-256 over the contents of all files (missing files hash as a marker).
fn content_hash(files: &[(PathBuf, FileStamp)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (p, _) in files {
        match std::fs::read(p) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(b"\xffmissing"),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    out
}

impl LiveRegistry {
    /// Loads the registry at `path` (or an empty one when None). An invalid registry is an error: the agent must
    /// not start with it.
    pub fn open(path: Option<&Path>, secret: KeySecret) -> Result<Arc<Self>, RegistryError> {
        let (snapshot, files) = match path {
            Some(p) => {
                let loaded = load_file(p, &secret)?;
                let files = stamps(std::iter::once(p.to_path_buf()).chain(loaded.dependencies));
                let snap = Snapshot::build(loaded.registry, secret.clone(), 0, Some(p.to_path_buf()), None);
                (snap, files)
            }
            None => (Snapshot::empty(secret.clone()), Vec::new()),
        };
        let attempted_hash = content_hash(&files);
        let snapshot = Arc::new(snapshot);
        tracing::info!(
            registry = %path.map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
            apis = snapshot.registry.apis.len(),
            applications = snapshot.registry.applications.len(),
            keys = snapshot.registry.keys.len(),
            "registry loaded"
        );
        let (changes, _) = tokio::sync::watch::channel(snapshot.clone());
        Ok(Arc::new(LiveRegistry {
            current: ArcSwap::new(snapshot),
            path: path.map(Path::to_path_buf),
            secret,
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stats: Mutex::new(ReloadStats::default()),
            state: Mutex::new(WatchState {
                files,
                attempted_hash,
                polls: 0,
            }),
            changes,
        }))
    }

    /// The current snapshot, for the event path (cheap; never blocks on a reload).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn secret(&self) -> &KeySecret {
        &self.secret
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// A receiver that always holds the current snapshot and is notified on every successful reload (use
    /// `changed().await` in async code, or `has_changed()` / `borrow_and_update()` when polling). The initial
    /// snapshot is already there (marked seen).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
        self.changes.subscribe()
    }

    pub fn stats(&self) -> ReloadStats {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.generation = self.generation();
        s.reloads = self.reloads.load(Ordering::Relaxed);
        s.failures = self.failures.load(Ordering::Relaxed);
        s
    }

    /// One watcher step: if the registry or a file it references changed, load and validate it and swap it in;
    /// on failure log every problem and keep the current snapshot.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let Some(path) = self.path.clone() else {
            return ReloadOutcome::Unchanged;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.polls += 1;
        let now_stamps: Vec<FileStamp> = state.files.iter().map(|(p, _)| stamp(p)).collect();
        let stamps_changed = state.files.iter().zip(&now_stamps).any(|((_, old), new)| old != new);
        if !stamps_changed && state.polls % HASH_EVERY_POLLS != 0 {
            return ReloadOutcome::Unchanged;
        }
        for ((_, old), new) in state.files.iter_mut().zip(now_stamps) {
            *old = new;
        }
        let hash = content_hash(&state.files);
        if hash == state.attempted_hash {
            return ReloadOutcome::Unchanged;
        }
        state.attempted_hash = hash;
        match load_file(&path, &self.secret) {
            Ok(loaded) => {
                let previous = self.current.load_full();
                let generation = previous.generation + 1;
                state.files = stamps(std::iter::once(path.clone()).chain(loaded.dependencies));
                // Dependencies may have changed; re-hash what the new registry reads.
                state.attempted_hash = content_hash(&state.files);
                let snap = Arc::new(Snapshot::build(
                    loaded.registry,
                    self.secret.clone(),
                    generation,
                    Some(path.clone()),
                    Some(&previous),
                ));
                self.current.store(snap.clone());
                self.reloads.fetch_add(1, Ordering::Relaxed);
                {
                    let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.last_error = None;
                    st.last_reload_at = Some(Timestamp::now());
                }
                tracing::info!(
                    registry = %path.display(),
                    generation,
                    apis = snap.registry.apis.len(),
                    applications = snap.registry.applications.len(),
                    keys = snap.registry.keys.len(),
                    "registry reloaded"
                );
                self.changes.send_replace(snap);
                ReloadOutcome::Reloaded { generation }
            }
            Err(e) => {
                let error = e.to_string();
                self.failures.fetch_add(1, Ordering::Relaxed);
                {
                    let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.last_error = Some(error.clone());
                    st.last_failure_at = Some(Timestamp::now());
                }
                tracing::warn!(
                    registry = %path.display(),
                    generation = self.generation(),
                    "registry change rejected, keeping the last good registry: {error}"
                );
                ReloadOutcome::Rejected { error }
            }
        }
    }

    /// Starts a thread that polls for changes every `interval`. None without a registry file. Dropping the
    /// returned handle stops the thread.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> Option<Watcher> {
        self.path.as_ref()?;
        let (stop, stopped) = mpsc::channel::<()>();
        let live = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("registry-watch".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {
                        live.reload_if_changed();
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            });
        match thread {
            Ok(thread) => Some(Watcher {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!("cannot start registry watcher thread: {e}; hot reload disabled");
                None
            }
        }
    }
}

/// Handle of the watcher thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
