//! On-disk spool of ClickHouse batches that could not be inserted yet.
//!
//! One file per batch, named `RRRRRRRRRRRRRRRR-SSSSSSSSSSSSSSSS.batch` (hex run id = agent start time in
//! microseconds, hex batch sequence), so lexical order is production order across agent restarts. A file is written
//! as `*.tmp`, fsynced, renamed and the directory fsynced: a crash or a full disk leaves either a whole batch or a
//! `.tmp` that is removed (at once when the write fails, by the next [`Spool::open`] after a crash, counted in
//! [`Spool::unfinished`]); a half-written file is never replayed. A file system that fills up before the spool's own
//! bound is [`SpoolError::DiskFull`], told apart from [`SpoolError::Full`] (the configured bound).
//!
//! File layout (integers little-endian):
//! ```text
//! magic "OBSSPL01" | run_id u64 | seq u64 | rows u64 | created_us i64
//! | token (u32 len + UTF-8) | table (u32 len + UTF-8) | columns (u32 len + UTF-8)
//! | payload (u64 len + bytes: RowBinaryWithNamesAndTypes body) | crc32 u32 of everything before it
//! ```
//! A file that fails to parse or to match its checksum is moved to `quarantine/` (the newest
//! [`QUARANTINE_KEEP`] are kept), logged and counted; it never stops the spool.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"OBSSPL01";
/// Quarantined files kept for inspection; older ones are deleted.
pub const QUARANTINE_KEEP: usize = 16;

/// Position of a batch in production order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId {
    pub run_id: u64,
    pub seq: u64,
}

impl BatchId {
    fn file_name(self) -> String {
        format!("{:016x}-{:016x}.batch", self.run_id, self.seq)
    }

    fn parse_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".batch")?;
        let (r, s) = stem.split_once('-')?;
        if r.len() != 16 || s.len() != 16 {
            return None;
        }
        Some(BatchId {
            run_id: u64::from_str_radix(r, 16).ok()?,
            seq: u64::from_str_radix(s, 16).ok()?,
        })
    }
}

/// One batch as inserted into ClickHouse: everything needed to replay it, even by a later binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledBatch {
    pub id: BatchId,
    /// Rows in `payload`.
    pub rows: u64,
    /// When the batch was sealed, microseconds since the epoch.
    pub created_us: i64,
    /// `insert_deduplication_token` of the batch.
    pub token: String,
    /// Table name (without database).
    pub table: String,
    /// Column list of the INSERT, e.g. `ts, duration_us, ...`.
    pub columns: String,
    /// RowBinaryWithNamesAndTypes body: header and rows.
    pub payload: Bytes,
}

impl SpooledBatch {
    /// Size of the file this batch occupies in the spool.
    pub fn encoded_len(&self) -> u64 {
        (8 + 8 * 4 + 4 * 3 + 8 + 4 + self.token.len() + self.table.len() + self.columns.len())
            as u64
            + self.payload.len() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len() as usize);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.id.run_id.to_le_bytes());
        b.extend_from_slice(&self.id.seq.to_le_bytes());
        b.extend_from_slice(&self.rows.to_le_bytes());
        b.extend_from_slice(&self.created_us.to_le_bytes());
        for s in [&self.token, &self.table, &self.columns] {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&(self.payload.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and verifies a spool file's content.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        if data.len() < MAGIC.len() + 4 {
            return Err(format!("file too short ({} bytes)", data.len()));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let got = crc32fast::hash(body);
        if want != got {
            return Err(format!(
                "checksum mismatch (stored {want:08x}, computed {got:08x})"
            ));
        }
        let mut r = Reader { data: body, pos: 0 };
        if r.take(8)? != MAGIC {
            return Err("bad magic: not an observer spool file".into());
        }
        let run_id = r.u64()?;
        let seq = r.u64()?;
        let rows = r.u64()?;
        let created_us = r.u64()? as i64;
        let token = r.string()?;
        let table = r.string()?;
        let columns = r.string()?;
        let plen = r.u64()?;
        let payload = Bytes::copy_from_slice(
            r.take(usize::try_from(plen).map_err(|_| "payload length overflows")?)?,
        );
        if r.pos != body.len() {
            return Err(format!(
                "{} trailing bytes after payload",
                body.len() - r.pos
            ));
        }
        Ok(SpooledBatch {
            id: BatchId { run_id, seq },
            rows,
            created_us,
            token,
            table,
            columns,
            payload,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated: need {n} bytes at offset {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| "string field is not UTF-8".to_string())
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error(
        "spool {dir} is full: {used} of {max} bytes used, a batch of {needed} bytes ({rows} rows) does not fit"
    )]
    Full {
        dir: PathBuf,
        used: u64,
        max: u64,
        needed: u64,
        rows: u64,
    },
    #[error(
        "no space left for the spool on {path}'s file system ({source}) before its own bound of {max} bytes ({used} \
         used): a batch of {rows} rows does not fit"
    )]
    DiskFull {
        path: PathBuf,
        used: u64,
        max: u64,
        rows: u64,
        #[source]
        source: io::Error,
    },
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of spooled batches with a size bound. Not thread-safe by itself: wrap it in a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    files: BTreeMap<BatchId, SpoolEntry>,
    bytes: u64,
    quarantined: u64,
    unfinished: u64,
}

#[derive(Debug, Clone, Copy)]
struct SpoolEntry {
    size: u64,
    /// Rows, when known (batches pushed by this process); files found at open count 0 until read.
    rows: u64,
}

impl Spool {
    /// Opens (creating) `dir`, removes unfinished `.tmp` files and indexes the batches a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            files: BTreeMap::new(),
            bytes: 0,
            quarantined: 0,
            unfinished: 0,
        };
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !entry.file_type().map_err(io_err(&path))?.is_file() {
                continue;
            }
            if name.ends_with(".tmp") {
                tracing::warn!(file = %path.display(), "removing unfinished spool file left by a crash");
                fs::remove_file(&path).map_err(io_err(&path))?;
                spool.unfinished += 1;
                continue;
            }
            match BatchId::parse_file_name(&name) {
                Some(id) => {
                    let size = entry.metadata().map_err(io_err(&path))?.len();
                    spool.bytes += size;
                    spool.files.insert(id, SpoolEntry { size, rows: 0 });
                }
                None => {
                    tracing::warn!(file = %path.display(), "ignoring unexpected file in the spool directory");
                }
            }
        }
        if !spool.files.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                batches = spool.files.len(),
                bytes = spool.bytes,
                "spool holds batches from a previous run; they will be replayed first"
            );
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes of all batch files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Rows in batches pushed by this process and still spooled (files found at open are not counted).
    pub fn known_rows(&self) -> u64 {
        self.files.values().map(|e| e.rows).sum()
    }

    /// Files quarantined since open.
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }

    /// Unfinished `.tmp` files removed at open (a write cut short by a crash).
    pub fn unfinished(&self) -> u64 {
        self.unfinished
    }

    pub fn oldest(&self) -> Option<BatchId> {
        self.files.keys().next().copied()
    }

    /// Durably stores a batch. Fails with [`SpoolError::Full`] when it would exceed the size bound.
    pub fn push(&mut self, batch: &SpooledBatch) -> Result<u64, SpoolError> {
        let data = batch.encode();
        let size = data.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                used: self.bytes,
                max: self.max_bytes,
                needed: size,
                rows: batch.rows,
            });
        }
        let name = batch.id.file_name();
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        if let Err(source) = write() {
            // A half-written file must never be replayed: remove it (unlinking works on a full file system).
            let _ = fs::remove_file(&tmp);
            if matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) {
                return Err(SpoolError::DiskFull {
                    path: tmp,
                    used: self.bytes,
                    max: self.max_bytes,
                    rows: batch.rows,
                    source,
                });
            }
            return Err(SpoolError::Io { path, source });
        }
        if let Some(old) = self.files.insert(
            batch.id,
            SpoolEntry {
                size,
                rows: batch.rows,
            },
        ) {
            self.bytes -= old.size;
        }
        self.bytes += size;
        Ok(size)
    }

    /// Reads the oldest batch, quarantining any corrupted files in front of it. `Ok(None)` when empty.
    pub fn read_oldest(&mut self) -> Result<Option<SpooledBatch>, SpoolError> {
        while let Some(id) = self.oldest() {
            let path = self.dir.join(id.file_name());
            let mut data = Vec::new();
            let read = File::open(&path).and_then(|mut f| f.read_to_end(&mut data));
            let problem = match read {
                Ok(_) => match SpooledBatch::decode(&data) {
                    Ok(b) if b.id == id => return Ok(Some(b)),
                    Ok(b) => format!("file holds batch {:?}, not {:?}", b.id, id),
                    Err(e) => e,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Removed behind our back: forget it.
                    self.forget(id);
                    continue;
                }
                Err(e) => return Err(SpoolError::Io { path, source: e }),
            };
            self.quarantine(id, &problem)?;
        }
        Ok(None)
    }

    /// Deletes a batch after it was inserted.
    pub fn remove(&mut self, id: BatchId) -> Result<(), SpoolError> {
        let path = self.dir.join(id.file_name());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SpoolError::Io { path, source }),
        }
        self.forget(id);
        Ok(())
    }

    fn forget(&mut self, id: BatchId) {
        if let Some(e) = self.files.remove(&id) {
            self.bytes -= e.size;
        }
    }

    fn quarantine(&mut self, id: BatchId, problem: &str) -> Result<(), SpoolError> {
        let path = self.dir.join(id.file_name());
        let qdir = self.dir.join("quarantine");
        fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        let dest = qdir.join(id.file_name());
        tracing::error!(
            file = %path.display(),
            moved_to = %dest.display(),
            problem,
            "corrupted spool file quarantined; its rows are not replayed"
        );
        if let Err(e) = fs::rename(&path, &dest) {
            tracing::error!(file = %path.display(), error = %e, "cannot move corrupted spool file; deleting it");
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        self.forget(id);
        self.quarantined += 1;
        prune_quarantine(&qdir);
        Ok(())
    }
}

fn prune_quarantine(qdir: &Path) {
    let Ok(rd) = fs::read_dir(qdir) else { return };
    let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    if names.len() <= QUARANTINE_KEEP {
        return;
    }
    names.sort();
    for p in &names[..names.len() - QUARANTINE_KEEP] {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(run_id: u64, seq: u64, payload_len: usize) -> SpooledBatch {
        SpooledBatch {
            id: BatchId { run_id, seq },
            rows: seq + 1,
            created_us: 1_700_000_000_000_000 + seq as i64,
            token: format!("agent:{run_id:x}:{seq}"),
            table: "http_requests".into(),
            columns: "ts, method".into(),
            payload: Bytes::from(vec![(seq % 251) as u8; payload_len]),
        }
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("create temp dir")
    }

    #[test]
    fn encode_decode_round_trip() {
        let b = batch(7, 3, 1000);
        let data = b.encode();
        assert_eq!(
            data.len() as u64,
            b.encoded_len(),
            "encoded_len must be exact"
        );
        assert_eq!(SpooledBatch::decode(&data).expect("decodes"), b);
    }

    #[test]
    fn decode_rejects_every_single_byte_flip_and_truncation() {
        let data = batch(1, 2, 64).encode();
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x40;
            assert!(
                SpooledBatch::decode(&d).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        for n in 0..data.len() {
            assert!(
                SpooledBatch::decode(&data[..n]).is_err(),
                "truncation to {n} went unnoticed"
            );
        }
    }

    #[test]
    fn replays_in_production_order_across_runs() {
        let dir = tmp();
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        // Pushed out of order, from two runs.
        for (run, seq) in [(2, 0), (1, 5), (1, 17), (2, 1), (1, 16)] {
            s.push(&batch(run, seq, 10)).expect("push");
        }
        let mut got = Vec::new();
        while let Some(b) = s.read_oldest().expect("read") {
            got.push((b.id.run_id, b.id.seq));
            s.remove(b.id).expect("remove");
        }
        assert_eq!(got, vec![(1, 5), (1, 16), (1, 17), (2, 0), (2, 1)]);
        assert_eq!(s.bytes(), 0, "all bytes released");
        assert!(s.is_empty());
    }

    #[test]
    fn size_bound_is_enforced_and_released() {
        let dir = tmp();
        let one = batch(1, 0, 1000).encoded_len();
        let mut s = Spool::open(dir.path(), one * 3).expect("open");
        for seq in 0..3 {
            s.push(&batch(1, seq, 1000)).expect("fits");
        }
        assert_eq!(s.bytes(), one * 3);
        match s.push(&batch(1, 3, 1000)) {
            Err(SpoolError::Full {
                used, max, rows, ..
            }) => {
                assert_eq!((used, max, rows), (one * 3, one * 3, 4));
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(s.len(), 3, "a rejected batch leaves no file");
        let oldest = s.oldest().expect("has oldest");
        s.remove(oldest).expect("remove");
        s.push(&batch(1, 3, 1000)).expect("fits after a removal");
        let msg = Spool::open(dir.path(), 10)
            .expect("reopen")
            .push(&batch(9, 9, 1000))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("is full") && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn restart_finds_predecessor_batches_and_drops_tmp_files() {
        let dir = tmp();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
            s.push(&batch(1, 0, 100)).expect("push");
            s.push(&batch(1, 1, 100)).expect("push");
        }
        fs::write(
            dir.path()
                .join("0000000000000001-0000000000000002.batch.tmp"),
            b"partial",
        )
        .expect("write tmp");
        fs::write(dir.path().join("README"), b"not a batch").expect("write stray");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 2 * batch(1, 0, 100).encoded_len());
        assert!(
            !dir.path()
                .join("0000000000000001-0000000000000002.batch.tmp")
                .exists(),
            "tmp removed"
        );
        assert_eq!(s.unfinished(), 1, "and counted");
        assert!(
            dir.path().join("README").exists(),
            "foreign files are left alone"
        );
        let b = s.read_oldest().expect("read").expect("one batch");
        assert_eq!(b, batch(1, 0, 100), "content survives restart");
    }

    #[test]
    fn corrupted_files_are_quarantined_and_skipped() {
        let dir = tmp();
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        for seq in 0..4 {
            s.push(&batch(1, seq, 50)).expect("push");
        }
        let p0 = dir.path().join(BatchId { run_id: 1, seq: 0 }.file_name());
        let mut d = fs::read(&p0).expect("read");
        d[30] ^= 1;
        fs::write(&p0, d).expect("corrupt 0");
        let p1 = dir.path().join(BatchId { run_id: 1, seq: 1 }.file_name());
        fs::write(&p1, b"").expect("truncate 1");
        // A valid batch under the wrong name is also rejected.
        let p2 = dir.path().join(BatchId { run_id: 1, seq: 2 }.file_name());
        fs::write(&p2, batch(5, 5, 50).encode()).expect("misname 2");

        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        let b = s.read_oldest().expect("no error").expect("the good batch");
        assert_eq!(b.id, BatchId { run_id: 1, seq: 3 });
        assert_eq!(s.quarantined(), 3);
        assert_eq!(s.len(), 1);
        let q: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
            .expect("quarantine dir")
            .collect();
        assert_eq!(q.len(), 3, "quarantined files are kept for inspection");
        assert_eq!(s.bytes(), batch(1, 3, 50).encoded_len());
    }

    #[test]
    fn quarantine_is_bounded() {
        let dir = tmp();
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        let n = QUARANTINE_KEEP as u64 + 5;
        for seq in 0..n {
            s.push(&batch(1, seq, 10)).expect("push");
            fs::write(
                dir.path().join(BatchId { run_id: 1, seq }.file_name()),
                b"junk",
            )
            .expect("corrupt");
        }
        assert!(s.read_oldest().expect("read").is_none());
        assert_eq!(s.quarantined(), n);
        let kept = fs::read_dir(dir.path().join("quarantine"))
            .expect("dir")
            .count();
        assert_eq!(kept, QUARANTINE_KEEP);
    }

    #[test]
    fn vanished_file_is_forgotten() {
        let dir = tmp();
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        s.push(&batch(1, 0, 10)).expect("push");
        s.push(&batch(1, 1, 10)).expect("push");
        fs::remove_file(dir.path().join(BatchId { run_id: 1, seq: 0 }.file_name())).expect("rm");
        let b = s.read_oldest().expect("read").expect("batch");
        assert_eq!(b.id.seq, 1);
        assert_eq!(s.quarantined(), 0);
    }

    #[test]
    fn unwritable_dir_is_a_clear_error() {
        let dir = tmp();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").expect("write");
        let err = Spool::open(&file.join("spool"), 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not-a-dir"), "error names the path: {err}");
    }
}
