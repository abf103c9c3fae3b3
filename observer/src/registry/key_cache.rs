//! Fingerprints of the keys seen lately: a client presents the same key on every request, and its HMAC-SHA256
//! fingerprint (two SHA-256 compressions and a finalization, about 0.15 µs, 4% of the agent's per-exchange time in
//! `cargo bench -p observer --bench replay`) is computed once per key, not once per exchange. The cache holds no raw
//! key: entries are found by a keyed 128-bit hash of it ([`KeySecret::cache_hash`]). One per registry snapshot, so a
//! reload (other keys, another secret) starts it afresh.
use std::collections::HashMap;
use std::sync::Mutex;

use super::fingerprint::KeySecret;
use crate::event::SharedStr;

/// Keys remembered; the cache starts over beyond that (keys in use at once are far fewer on one node, and a flood of
/// made-up keys then costs what it cost without a cache).
pub const MAX_CACHED_KEYS: usize = 8192;

/// What a raw key's fingerprint is, as enrichment needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprinted {
    /// The registry key with this fingerprint (index in `Registry::keys`), if any.
    pub key: Option<usize>,
    /// The fingerprint in hex, as events carry it (the registry's shared copy for a known key).
    pub hex: SharedStr,
    /// The key's display suffix (`key_suffix`), shared by the events that present it.
    pub suffix: SharedStr,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KeyCache {
    seen: Mutex<HashMap<u128, Fingerprinted, foldhash::fast::RandomState>>,
}

impl KeyCache {
    /// `raw`'s fingerprint, from the cache or computed by `compute` (given `raw`'s HMAC fingerprint and `raw`) and
    /// remembered.
    pub fn get_or_insert(
        &self,
        secret: &KeySecret,
        raw: &[u8],
        compute: impl FnOnce([u8; 32], &[u8]) -> Fingerprinted,
    ) -> Fingerprinted {
        let id = secret.cache_hash(raw);
        if let Some(found) = self.lock().get(&id) {
            // Presented again: its strings are worth pinning (a key presented once, in a flood of made-up keys, is not).
            return Fingerprinted {
                key: found.key,
                hex: found.hex.share(),
                suffix: found.suffix.share(),
            };
        }
        // Computed outside the lock; a second thread computing the same key meanwhile writes the same value.
        let found = compute(secret.fingerprint(raw), raw);
        let mut seen = self.lock();
        if seen.len() >= MAX_CACHED_KEYS {
            seen.clear();
        }
        seen.insert(id, found.clone());
        found
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u128, Fingerprinted, foldhash::fast::RandomState>> {
        // A panic while holding the lock left at worst a partly filled map of correct entries.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_fingerprinted_once_and_found_again_by_its_hash_only() {
        let secret = KeySecret::from_bytes(b"test-secret-0123456789");
        let cache = KeyCache::default();
        let mut computed = 0;
        let mut get = |raw: &[u8]| {
            cache.get_or_insert(&secret, raw, |f, raw| {
                computed += 1;
                Fingerprinted {
                    key: None,
                    hex: SharedStr::from(hex::encode(f)),
                    suffix: SharedStr::from(std::str::from_utf8(raw).unwrap_or("")),
                }
            })
        };
        let a = get(b"sk_live_a");
        let again = get(b"sk_live_a");
        let b = get(b"sk_live_b");
        assert_eq!(computed, 2, "the second lookup of a key is a hit");
        assert_eq!(a, again);
        assert_ne!(a.hex, b.hex);
        assert_eq!(a.hex, secret.fingerprint_hex(b"sk_live_a"));
        assert_eq!(
            (a.suffix.as_str(), b.suffix.as_str()),
            ("sk_live_a", "sk_live_b")
        );
        assert!(
            std::ptr::eq(a.hex.as_str(), again.hex.as_str()),
            "a hit shares the stored string"
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn the_cache_starts_over_past_its_bound_and_keeps_answering_right() {
        let secret = KeySecret::from_bytes(b"test-secret-0123456789");
        let cache = KeyCache::default();
        let compute = |f: [u8; 32], _: &[u8]| Fingerprinted {
            key: None,
            hex: SharedStr::from(hex::encode(f)),
            suffix: SharedStr::default(),
        };
        for i in 0..MAX_CACHED_KEYS + 10 {
            let raw = format!("key-{i}");
            let got = cache.get_or_insert(&secret, raw.as_bytes(), compute);
            assert_eq!(got.hex, secret.fingerprint_hex(raw.as_bytes()));
            assert!(cache.len() <= MAX_CACHED_KEYS);
        }
        assert_eq!(cache.len(), 10, "cleared once at the bound, then refilled");
    }

    #[test]
    fn the_hash_depends_on_the_secret() {
        let a = KeySecret::from_bytes(b"test-secret-0123456789");
        let b = KeySecret::from_bytes(b"other-secret-0123456789");
        assert_ne!(a.cache_hash(b"k"), b.cache_hash(b"k"));
        assert_ne!(a.cache_hash(b"k"), a.cache_hash(b"k2"));
        assert_eq!(a.cache_hash(b"k"), a.cache_hash(b"k"));
    }
}
