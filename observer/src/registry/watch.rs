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

/// Length and SHA-256 of one file, read in chunks.
fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    Ok((len, out))
}

/// SHA-256 over the contents of all files (missing files hash as a marker), streamed so an oversized file costs
/// no memory (the loader refuses it).
fn content_hash(files: &[(PathBuf, FileStamp)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (p, _) in files {
        match hash_file(p) {
            Ok((len, digest)) => {
                h.update(len.to_le_bytes());
                h.update(digest);
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
                let snap = Snapshot::build(
                    loaded.registry,
                    secret.clone(),
                    0,
                    Some(p.to_path_buf()),
                    None,
                );
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
        let stamps_changed = state
            .files
            .iter()
            .zip(&now_stamps)
            .any(|((_, old), new)| old != new);
        if !stamps_changed && !state.polls.is_multiple_of(HASH_EVERY_POLLS) {
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
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    live.reload_if_changed();
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::event::{Exchange, KeyState};

    fn tmpdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("observer-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn secret() -> KeySecret {
        KeySecret::from_bytes(b"watch-test-secret-0123")
    }

    fn registry(revoked: bool) -> String {
        let fp = secret().fingerprint_hex(b"the-key-0123456789abcd");
        let revoke = if revoked {
            "        revoked_at: 2026-04-01\n        revoked_by: bob\n"
        } else {
            ""
        };
        format!(
            "teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match: {{hosts: a.com}}\napplications:\n  - id: app\n    team: t\nkeys:\n  - id: k\n    application: app\n    fingerprint: {fp}\n    grants:\n      - api: a\n        granted_by: alice\n        granted_at: 2026-01-01\n{revoke}"
        )
    }

    fn key_state(live: &LiveRegistry) -> KeyState {
        let mut ex = Exchange::default();
        ex.event.host = "a.com".into();
        ex.event.path = "/x".into();
        ex.event.ts = crate::registry::parse_date("2026-05-01").expect("date");
        ex.request
            .headers
            .push("X-Api-Key", "the-key-0123456789abcd");
        crate::enrich::enrich(&live.load(), &mut ex);
        ex.event.key_state
    }

    /// Rewrites a file so that mtime and/or size surely change.
    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write registry");
    }

    #[test]
    fn invalid_start_is_refused() {
        let dir = tmpdir("refuse");
        let path = dir.join("r.yaml");
        write(&path, "teams: [{id: t}, {id: t}]\n");
        let err =
            LiveRegistry::open(Some(&path), secret()).expect_err("invalid registry must not open");
        assert!(
            err.to_string().contains("r.yaml:1: duplicate team id"),
            "message: {err}"
        );
        let err = LiveRegistry::open(Some(&dir.join("missing.yaml")), secret())
            .expect_err("missing file");
        assert!(
            err.to_string().contains("cannot read registry"),
            "message: {err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hostile_edit_is_refused_and_the_last_good_registry_stays() {
        let dir = tmpdir("laughs");
        let path = dir.join("r.yaml");
        write(&path, &registry(false));
        let live = LiveRegistry::open(Some(&path), secret()).expect("valid registry opens");
        // Nine levels of nine aliases: 9^9 nodes once expanded, from 500 bytes.
        let mut laughs = "x0: &x0 [lol]\n".to_string();
        for i in 1..10 {
            laughs.push_str(&format!(
                "x{i}: &x{i} [{}]\n",
                vec![format!("*x{}", i - 1); 9].join(", ")
            ));
        }
        write(&path, &format!("{}{laughs}", registry(true)));
        let out = live.reload_if_changed();
        assert!(
            matches!(&out, ReloadOutcome::Rejected { error } if error.contains("aliases expand to more than")),
            "hostile edit rejected with a clear error: {out:?}"
        );
        assert_eq!(
            key_state(&live),
            KeyState::Valid,
            "last good registry still in use"
        );
        assert_eq!(live.stats().failures, 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reload_swaps_valid_and_keeps_last_good_on_invalid_edit() {
        let dir = tmpdir("reload");
        let path = dir.join("r.yaml");
        write(&path, &registry(false));
        let live = LiveRegistry::open(Some(&path), secret()).expect("valid registry opens");
        assert_eq!(live.path(), Some(path.as_path()));
        assert_eq!(
            live.secret().fingerprint_hex(b"x"),
            secret().fingerprint_hex(b"x")
        );
        let first = live.snapshot();
        assert_eq!(first.source.as_deref(), Some(path.as_path()));
        assert!(first.loaded_at.0 > 0, "load time recorded");
        assert_eq!(first.team("t").map(|t| t.id.as_str()), Some("t"));
        assert!(first.team("nope").is_none());
        let mut rx = live.subscribe();
        assert_eq!(key_state(&live), KeyState::Valid);
        assert_eq!(
            live.reload_if_changed(),
            ReloadOutcome::Unchanged,
            "nothing changed yet"
        );

        // An invalid edit is rejected, counted and the old registry stays.
        write(&path, &format!("{}    bogus: 1\n", registry(true)));
        let out = live.reload_if_changed();
        assert!(
            matches!(&out, ReloadOutcome::Rejected { error } if error.contains("unknown field `bogus`")),
            "invalid edit must be rejected with its problem: {out:?}"
        );
        assert_eq!(
            key_state(&live),
            KeyState::Valid,
            "last good registry still in use"
        );
        let stats = live.stats();
        assert_eq!((stats.generation, stats.reloads, stats.failures), (0, 0, 1));
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("r.yaml:")),
            "{stats:?}"
        );
        assert!(
            !rx.has_changed().expect("sender alive"),
            "subscribers not told about rejected edits"
        );
        assert_eq!(
            live.reload_if_changed(),
            ReloadOutcome::Unchanged,
            "a bad edit is reported once"
        );

        // Fixing it reloads: the key is now revoked.
        write(&path, &registry(true));
        assert_eq!(
            live.reload_if_changed(),
            ReloadOutcome::Reloaded { generation: 1 }
        );
        assert_eq!(key_state(&live), KeyState::Revoked);
        let stats = live.stats();
        assert_eq!((stats.generation, stats.reloads, stats.failures), (1, 1, 1));
        assert_eq!(stats.last_error, None, "cleared by a good reload");
        assert!(rx.has_changed().expect("sender alive"), "subscribers told");
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.generation, 1);
        assert!(
            snap.registry.keys[0].window.revoked_at.is_none()
                && snap.registry.keys[0].grants[0].window.revoked_at.is_some()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn same_size_same_mtime_edit_is_caught_by_hash() {
        let dir = tmpdir("hash");
        let path = dir.join("r.yaml");
        let a = registry(false).replace("alice", "AAAAA");
        let b = registry(false).replace("alice", "BBBBB");
        write(&path, &a);
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let live = LiveRegistry::open(Some(&path), secret()).expect("opens");
        write(&path, &b);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("restore mtime");
        let mut outcomes = Vec::new();
        for _ in 0..HASH_EVERY_POLLS {
            outcomes.push(live.reload_if_changed());
        }
        assert!(
            outcomes.contains(&ReloadOutcome::Reloaded { generation: 1 }),
            "periodic hash must catch an edit with identical mtime and size: {outcomes:?}"
        );
        assert_eq!(
            live.snapshot().registry.keys[0].grants[0].window.granted_by,
            "BBBBB"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn referenced_files_trigger_reload() {
        let dir = tmpdir("deps");
        let path = dir.join("r.yaml");
        let spec = dir.join("spec.yaml");
        write(
            &spec,
            "openapi: 3.0.0\ninfo: {title: A, version: '1'}\npaths:\n  /a/{x}: {get: {}}\n",
        );
        write(
            &path,
            "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {hosts: a.com}\n    openapi: spec.yaml\n",
        );
        let live = LiveRegistry::open(Some(&path), secret()).expect("opens");
        assert_eq!(live.snapshot().registry.apis[0].routes.len(), 1);
        write(&spec, "openapi: 3.0.0\ninfo: {title: A, version: '1'}\npaths:\n  /a/{x}: {get: {}}\n  /b: {post: {}}\n");
        assert_eq!(
            live.reload_if_changed(),
            ReloadOutcome::Reloaded { generation: 1 }
        );
        assert_eq!(
            live.snapshot().registry.apis[0].routes.len(),
            2,
            "new route from the OpenAPI file"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn watcher_thread_picks_up_changes_within_two_seconds() {
        let dir = tmpdir("thread");
        let path = dir.join("r.yaml");
        write(&path, &registry(false));
        let live = LiveRegistry::open(Some(&path), secret()).expect("opens");
        let watcher = live
            .spawn_watcher(Duration::from_millis(50))
            .expect("watcher starts with a file");
        // Readers keep going while the file changes.
        let reader = {
            let live = Arc::clone(&live);
            std::thread::spawn(move || {
                let mut n = 0u64;
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(300) {
                    let _ = key_state(&live);
                    n += 1;
                }
                n
            })
        };
        write(&path, &registry(true));
        let start = Instant::now();
        while key_state(&live) != KeyState::Revoked {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "reload not seen within 2 s: {:?}",
                live.stats()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            reader.join().expect("reader thread") > 0,
            "reader made progress during reload"
        );
        drop(watcher);
        let none = LiveRegistry::open(None, secret()).expect("empty registry");
        assert!(
            none.spawn_watcher(POLL_INTERVAL).is_none(),
            "nothing to watch without a file"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
