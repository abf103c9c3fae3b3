//! The per-deployment key secret (created 0600 on first use) and key fingerprints: HMAC-SHA256 of the raw key under
//! that secret, so raw keys never leave the agent's memory. Also the short display suffix, and the SipHash key of
//! events' `request_hash`, derived from the same secret.
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Length of a fingerprint in hex characters.
pub const FINGERPRINT_HEX_LEN: usize = 64;
/// Minimum secret length accepted from an existing file.
const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: cannot read key secret: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot create key secret: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: key secret is readable by group or others (mode {mode:o}): refused, since anyone who reads it can \
         link fingerprints back to keys; `chmod 600 {path}` (in Kubernetes, mount the Secret with defaultMode 0400)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: key secret is too short ({len} bytes, need at least {MIN_SECRET_BYTES})")]
    TooShort { path: PathBuf, len: usize },
}

/// The deployment's fingerprint secret. Cloning is cheap; `Debug` never shows the secret.
#[derive(Clone)]
pub struct KeySecret {
    /// HMAC state with the secret already absorbed; cloned per fingerprint.
    mac: HmacSha256,
    /// SipHash key of `request_hash`: the first 16 bytes of HMAC(secret, [`REQUEST_HASH_LABEL`]).
    request_key: [u8; 16],
    /// SipHash key of the fingerprint cache (`key_cache`): the first 16 bytes of HMAC(secret, [`KEY_CACHE_LABEL`]).
    cache_key: [u8; 16],
}

/// What the secret is applied to for the `request_hash` key (changing it changes every request hash).
const REQUEST_HASH_LABEL: &[u8] = b"observer request_hash v1";
/// What the secret is applied to for the fingerprint cache's key (never leaves the agent's memory).
const KEY_CACHE_LABEL: &[u8] = b"observer key cache v1";

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(<redacted>)")
    }
}

impl KeySecret {
    pub fn from_bytes(secret: &[u8]) -> Self {
        let mut s = KeySecret {
            mac: <HmacSha256 as KeyInit>::new_from_slice(secret)
                .expect("HMAC accepts keys of any length"),
            request_key: [0; 16],
            cache_key: [0; 16],
        };
        let derived = s.fingerprint(REQUEST_HASH_LABEL);
        s.request_key.copy_from_slice(&derived[..16]);
        let derived = s.fingerprint(KEY_CACHE_LABEL);
        s.cache_key.copy_from_slice(&derived[..16]);
        s
    }

    /// A keyed 128-bit hash (SipHash-1-3) of a raw key, by which the fingerprint cache finds it without keeping the
    /// key: without the secret nobody can make two keys collide, and by chance any two of 2^32 distinct keys collide
    /// with a probability of about 2^-65.
    pub fn cache_hash(&self, key: &[u8]) -> u128 {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut h = siphasher::sip128::SipHasher13::new_with_key(&self.cache_key);
        h.write(key);
        h.finish128().as_u128()
    }

    /// A SipHash-1-3 hasher keyed for events' `request_hash`: every node holding the same secret hashes the same
    /// request alike; without the secret the hash reveals nothing about (and cannot be tested against) a value.
    pub fn request_hasher(&self) -> siphasher::sip::SipHasher13 {
        siphasher::sip::SipHasher13::new_with_key(&self.request_key)
    }

    /// Reads the secret at `path`, creating it (mode 0600, parent directories as needed, 32 random bytes written as
    /// hex) when absent. Whichever command runs first creates it; a concurrent creator's file is read instead.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match std::fs::File::open(path) {
            Ok(f) => Self::read_from(path, f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(source) => Err(SecretError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn read_from(path: &Path, mut f: std::fs::File) -> Result<Self, SecretError> {
        let read_err = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = f.metadata().map_err(read_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_path_buf(),
                mode: meta.permissions().mode() & 0o777,
            });
        }
        let mut raw = Vec::new();
        f.read_to_end(&mut raw).map_err(read_err)?;
        Self::parse(path, &raw)
    }

    /// The secret from a file's content: hex as we write it, else the raw bytes.
    fn parse(path: &Path, raw: &[u8]) -> Result<Self, SecretError> {
        let trimmed = raw.trim_ascii();
        // Files we create hold hex; any other content is used as raw bytes.
        let bytes = match std::str::from_utf8(trimmed)
            .ok()
            .and_then(|s| hex::decode(s).ok())
        {
            Some(decoded) if !decoded.is_empty() => decoded,
            _ => trimmed.to_vec(),
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// The secret of `examples/` (its fingerprints are in examples/registry.yaml), whatever mode the checkout
    /// gave the file.
    #[cfg(test)]
    pub fn example() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/example-key-secret");
        let raw = std::fs::read(&path).expect("examples/example-key-secret");
        Self::parse(&path, &raw).expect("example secret parses")
    }

    fn create(path: &Path) -> Result<Self, SecretError> {
        let create_err = |source| SecretError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(create_err)?;
        }
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut secret))
            .map_err(create_err)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process created it between our open and create: use theirs.
                let f = std::fs::File::open(path).map_err(|source| SecretError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                return Self::read_from(path, f);
            }
            Err(e) => return Err(create_err(e)),
        };
        file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(create_err)?;
        tracing::info!(path = %path.display(), "created new key secret");
        Ok(Self::from_bytes(&secret))
    }

    /// The raw 32-byte fingerprint of `key`.
    pub fn fingerprint(&self, key: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(key);
        let out = mac.finalize().into_bytes();
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&out);
        fp
    }

    /// Lower-case hex fingerprint of `key`.
    pub fn fingerprint_hex(&self, key: &[u8]) -> String {
        hex::encode(self.fingerprint(key))
    }
}

/// Writes `bytes` as lower-case hex into `out` (cleared first), reusing its capacity.
pub fn write_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.clear();
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

/// Parses a registry fingerprint (64 hex characters, any case).
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    if s.len() != FINGERPRINT_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Display suffix of a key: its last 4 characters, or fewer for short keys (a quarter of the key, so short keys are
/// not half revealed).
pub fn key_suffix(key: &str) -> &str {
    let chars = key.chars().count();
    let n = if chars >= 16 { 4 } else { chars / 4 };
    let start = key
        .char_indices()
        .nth(chars - n)
        .map(|(i, _)| i)
        .unwrap_or(key.len());
    &key[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "observer-fp-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn secret_file_is_created_0600_and_reused() {
        let dir = tmpdir("create");
        let path = dir.join("nested/key-secret");
        let a = KeySecret::load_or_create(&path).expect("secret must be created");
        let mode = std::fs::metadata(&path)
            .expect("secret file exists")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "secret file mode must be 0600, got {mode:o}"
        );
        let content = std::fs::read_to_string(&path).expect("secret readable");
        assert_eq!(content.trim().len(), 64, "32 random bytes as hex");
        let b = KeySecret::load_or_create(&path).expect("existing secret must load");
        assert_eq!(
            a.fingerprint_hex(b"k"),
            b.fingerprint_hex(b"k"),
            "reloading the file gives the same fingerprints"
        );
        let other = KeySecret::load_or_create(&dir.join("other")).expect("second secret");
        assert_ne!(
            a.fingerprint_hex(b"k"),
            other.fingerprint_hex(b"k"),
            "different deployments give different fingerprints"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn short_secret_is_refused() {
        let dir = tmpdir("short");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s");
        std::fs::write(&path, "abcd").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = KeySecret::load_or_create(&path).expect_err("4-byte secret must be refused");
        assert!(err.to_string().contains("too short"), "message: {err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn secret_readable_by_others_is_refused() {
        let dir = tmpdir("exposed");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef").expect("write");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = KeySecret::load_or_create(&path).expect_err("exposed secret must be refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("mode {mode:o}")) && msg.contains("chmod 600"),
                "message names the mode and the fix: {msg}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            KeySecret::load_or_create(&path).expect("owner-only secret loads");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fingerprint_is_hmac_sha256() {
        // RFC 4231 test case 2.
        let s = KeySecret::from_bytes(b"Jefe");
        assert_eq!(
            s.fingerprint_hex(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut out = String::from("junk");
        write_hex(&s.fingerprint(b"what do ya want for nothing?"), &mut out);
        assert_eq!(out, s.fingerprint_hex(b"what do ya want for nothing?"));
        assert_eq!(
            parse_fingerprint(&out),
            Some(s.fingerprint(b"what do ya want for nothing?"))
        );
        assert_eq!(parse_fingerprint("abc"), None);
        assert_eq!(format!("{s:?}"), "KeySecret(<redacted>)");
    }

    #[test]
    fn suffixes() {
        assert_eq!(key_suffix("sk_live_0123456789ab3f9a"), "3f9a");
        assert_eq!(key_suffix("abcdefgh"), "gh", "short keys reveal a quarter");
        assert_eq!(key_suffix("abc"), "");
        assert_eq!(key_suffix(""), "");
        assert_eq!(
            key_suffix("ключ-ключ-ключ-ёжик"),
            "ёжик",
            "char boundaries respected"
        );
    }
}
