//! cgroup v2: find the unified hierarchy's mount point and map cgroup ids (directory inode numbers) to paths.
//!
//! The kernel reports a socket's cgroup as a 64-bit id, which on cgroup v2 is the inode number of the cgroup
//! directory. [`FsCgroupResolver`] walks the hierarchy once, caches id -> path, and rescans on a miss at most once
//! per `min_rescan` so a flood of unknown ids cannot turn into a flood of directory walks.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::event::SharedStr;

/// Errors finding or reading the cgroup v2 hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup v2 (cgroup2) filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
}

/// Maps a cgroup id to its path relative to the cgroup v2 mount ("/" for the root, "" when unknown).
pub trait CgroupResolver: Send {
    fn path(&mut self, id: u64) -> SharedStr;
}

/// Mount point of the first cgroup2 filesystem in a `/proc/<pid>/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup v2 is mounted on this host (`/sys/fs/cgroup` when unified, `/sys/fs/cgroup/unified` when hybrid).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })?;
    parse_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
}

/// Resolves cgroup ids by walking a cgroup v2 hierarchy, with a cache and a rate-limited rescan on a miss.
pub struct FsCgroupResolver {
    root: PathBuf,
    /// Paths by id. Looked up twice per exchange (client and server): foldhash, not SipHash (a kernel-given id needs no
    /// defence against chosen collisions).
    cache: HashMap<u64, SharedStr, foldhash::fast::RandomState>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl FsCgroupResolver {
    /// Resolver over the hierarchy mounted at `root`; the first lookup scans it.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: HashMap::default(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
        }
    }

    /// Resolver over this host's cgroup v2 mount.
    pub fn from_system() -> Result<Self, CgroupError> {
        let root = cgroup2_mount()?;
        std::fs::metadata(&root).map_err(|source| CgroupError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self::new(root))
    }

    /// Minimum time between two scans triggered by misses.
    pub fn with_min_rescan(mut self, min_rescan: Duration) -> Self {
        self.min_rescan = min_rescan;
        self
    }

    /// Rebuilds the cache from the directory tree; unreadable subtrees are skipped (cgroups come and go).
    fn rescan(&mut self) {
        let mut cache =
            HashMap::with_capacity_and_hasher(self.cache.len().max(64), Default::default());
        let mut stack: Vec<(PathBuf, String)> = vec![(self.root.clone(), "/".to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            cache.insert(meta.ino(), SharedStr::from(&rel));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(ft) = entry.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child_rel));
            }
        }
        tracing::debug!(root = %self.root.display(), cgroups = cache.len(), "scanned cgroup hierarchy");
        self.cache = cache;
        self.last_scan = Some(Instant::now());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl CgroupResolver for FsCgroupResolver {
    fn path(&mut self, id: u64) -> SharedStr {
        if id == 0 {
            return SharedStr::default();
        }
        if let Some(p) = self.cache.get(&id) {
            return p.share();
        }
        let may_scan = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if may_scan {
            self.rescan();
        }
        self.cache.get(&id).cloned().unwrap_or_default()
    }
}

/// A fixed id -> path table: for tests and for hosts without cgroup v2.
#[derive(Debug, Default, Clone)]
pub struct MapResolver(pub HashMap<u64, String>);

impl CgroupResolver for MapResolver {
    fn path(&mut self, id: u64) -> SharedStr {
        self.0.get(&id).map(SharedStr::from).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_hybrid_and_unified() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cg rw shared:9 - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            parse_mountinfo("33 31 0:28 / /x rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(parse_mountinfo("garbage\n\n - \n"), None);
    }

    #[test]
    fn resolves_directory_inodes() {
        let root =
            std::env::temp_dir().join(format!("observer-cgroups-test-{}", std::process::id()));
        let leaf = root.join("system.slice").join("nginx.service");
        std::fs::create_dir_all(&leaf).expect("create test hierarchy");
        let ino = |p: &Path| std::fs::metadata(p).expect("stat test dir").ino();
        let mut r = FsCgroupResolver::new(root.clone()).with_min_rescan(Duration::from_secs(3600));
        assert_eq!(r.path(ino(&root)), "/");
        assert_eq!(r.path(ino(&leaf)), "/system.slice/nginx.service");
        assert_eq!(r.path(0), "", "id 0 is unknown");

        // A cgroup created after the scan is not found until the rate limit allows a rescan.
        let late = root.join("late.scope");
        std::fs::create_dir_all(&late).expect("create late cgroup");
        assert_eq!(r.path(ino(&late)), "", "rescan is rate-limited");
        r.min_rescan = Duration::ZERO;
        assert_eq!(r.path(ino(&late)), "/late.scope");
        std::fs::remove_dir_all(&root).expect("remove test hierarchy");
    }

    #[test]
    fn system_mount_is_found_or_clear_error() {
        match cgroup2_mount() {
            Ok(p) => assert!(p.is_absolute(), "mount point {p:?} must be absolute"),
            Err(e) => assert!(matches!(e, CgroupError::NoCgroup2), "unexpected error {e}"),
        }
    }
}
