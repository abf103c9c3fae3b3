//! Strings events share instead of copying: [`SharedStr`], the [`Interner`] that hands out one copy per repeated
//! value, and pinning, which takes the reference count off the per-event path within a fixed memory budget.
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};

/// An immutable string shared by reference count. Process names and cgroup paths repeat for every exchange of a
/// socket: events share one copy instead of allocating and freeing their own.
/// Serialized as a plain string; the empty string allocates nothing. Registry values (API, route, application,
/// known key fingerprint) are shared the same way, from the registry snapshot. Hashes and compares as its `str`.
///
/// One pointer wide (`arcstr`, its length beside the count): an event holds 26 of these, and at `Arc<str>`'s two
/// words each they were 416 of its 696 bytes, moved on every hand-over of the event (see BENCHMARKS.md's replay
/// A/B).
///
/// A string that events keep taking is *pinned* (see [`SharedStr::share`]): never freed, its copies made and dropped
/// without touching a count.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharedStr(ArcStr);

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}

impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl SharedStr {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// A copy for an event: a `clone` that pins the string first, while the process's [`PIN_BUDGET`] lasts. An event
    /// takes a dozen strings (method, host, process, cgroup, API, route, application, key) and drops them on
    /// another thread after the sinks encoded it: counted, each copy was an atomic increment on the capture thread
    /// and an atomic decrement on the dropping one, on cache lines the two threads took from each other (the
    /// decrements alone were 5% of the live agent's samples). A pinned string is a constant: copies are a pointer.
    /// Call it where a string goes into an event; a string nothing copies again stays counted and can be freed.
    #[inline]
    pub fn share(&self) -> SharedStr {
        if !ArcStr::is_static(&self.0) && !PIN_FULL.load(Ordering::Relaxed) {
            pin(&self.0);
        }
        self.clone()
    }

    /// Pinned, or a constant (the empty string): copies cost no count.
    pub fn is_pinned(&self) -> bool {
        ArcStr::is_static(&self.0)
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// The pinned copy when `s` was pinned already (a registry reloaded with the same names, an interner started over),
/// else a new one.
impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            return SharedStr(ArcStr::new());
        }
        pinned(s).unwrap_or_else(|| SharedStr(ArcStr::from(s)))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr::from(s.as_str())
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr::from(s.as_str())
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SharedStr::from(String::deserialize(d)?))
    }
}

/// Shared copies of strings that repeat from event to event (methods, hosts, user agents): each event takes a
/// reference-counted copy instead of allocating its own, which the sink's thread would then free (a free of memory
/// another thread allocated is the allocator's slow path). Bounded: past `cap` distinct strings it starts over, so
/// a stream of distinct values costs what copying them did; a string longer than [`Interner::MAX_LEN`] is copied,
/// not kept, so the interner holds at most `cap` x that many bytes. A string found again is pinned
/// ([`SharedStr::share`]), and a restart finds the pinned ones again.
#[derive(Debug)]
pub struct Interner {
    set: std::collections::HashSet<SharedStr, foldhash::fast::RandomState>,
    cap: usize,
}

impl Interner {
    /// Longest string kept (longer ones, rare user agents, get their own copy).
    pub const MAX_LEN: usize = 256;

    pub fn new(cap: usize) -> Self {
        Interner {
            set: Default::default(),
            cap: cap.max(1),
        }
    }

    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> SharedStr {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return SharedStr::from(s);
        }
        if let Some(v) = self.set.get(s) {
            // Seen twice: a string that repeats, worth pinning (one seen once, a stream of random hosts, is not).
            return v.share();
        }
        if self.set.len() >= self.cap {
            self.set.clear();
        }
        let v = SharedStr::from(s);
        self.set.insert(v.clone());
        v
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Most bytes of strings pinned for the life of the process, their headers and the pin table's slots counted. Past
/// it, strings stay counted (as every string was before pinning): a stream of ever new values cannot grow the agent.
/// 8 MiB holds about 150,000 strings of 24 bytes: the names, keys and routes of a large registry several times over.
pub const PIN_BUDGET: usize = 8 << 20;

/// The pinned strings, one copy per value, so that a value pinned once is never pinned again ([`From<&str>`]), and
/// what they cost.
struct PinTable {
    set: HashSet<SharedStr, foldhash::fast::RandomState>,
    bytes: usize,
    budget: usize,
}

impl PinTable {
    fn new(budget: usize) -> Self {
        PinTable {
            set: HashSet::default(),
            bytes: 0,
            budget,
        }
    }

    /// Pins `s` unless that would pass the budget (then false). A second copy of a value pinned already (two made
    /// before either was shared) is pinned too, so that sharing it never takes the lock again; only the first goes
    /// into the table.
    fn pin(&mut self, s: &ArcStr) -> bool {
        if ArcStr::is_static(s) {
            return true;
        }
        let bytes = self.bytes + pin_cost(s.len());
        if bytes > self.budget {
            return false;
        }
        s.leak();
        self.bytes = bytes;
        if !self.set.contains(s.as_str()) {
            self.set.insert(SharedStr(s.clone()));
        }
        true
    }
}

/// What pinning a string of `len` bytes costs: its allocation (a 16-byte header, rounded to the allocator's 16-byte
/// size classes) and a slot of the table.
fn pin_cost(len: usize) -> usize {
    (16 + len).next_multiple_of(16) + 16
}

static PINNED: LazyLock<Mutex<PinTable>> = LazyLock::new(|| Mutex::new(PinTable::new(PIN_BUDGET)));
/// Bytes pinned so far (the table's, copied out under its lock).
static PINNED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Set once the budget is spent: from then on [`SharedStr::share`] is a plain `clone` and takes no lock.
static PIN_FULL: AtomicBool = AtomicBool::new(false);

/// Bytes pinned so far, for `observer_pinned_string_bytes`.
pub fn pinned_bytes() -> usize {
    PINNED_BYTES.load(Ordering::Relaxed)
}

/// The pinned copy of `s`, if any (no lock before the first pin).
fn pinned(s: &str) -> Option<SharedStr> {
    if PINNED_BYTES.load(Ordering::Relaxed) == 0 {
        return None;
    }
    PINNED.lock().ok()?.set.get(s).cloned()
}

/// Pins `s` in the process's table, or notes that the budget is spent.
#[cold]
fn pin(s: &ArcStr) {
    let Ok(mut table) = PINNED.lock() else {
        return;
    };
    if table.pin(s) {
        PINNED_BYTES.store(table.bytes, Ordering::Relaxed);
    } else {
        PIN_FULL.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interner_shares_one_copy_per_string_and_starts_over_past_its_bound() {
        let mut i = Interner::new(2);
        let a = i.get("interner-GET");
        assert!(!a.is_pinned(), "seen once: counted");
        let b = i.get("interner-GET");
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "one copy");
        assert!(a.is_pinned() && b.is_pinned(), "seen twice: pinned");
        assert_eq!(i.get(""), SharedStr::default());
        assert_eq!(i.len(), 1, "the empty string is not kept");
        let long = "x".repeat(Interner::MAX_LEN + 1);
        assert_eq!(i.get(&long), long.as_str());
        assert_eq!(i.len(), 1, "a string over the length bound is not kept");
        let _ = i.get("interner-POST");
        assert_eq!(i.len(), 2);
        let put = i.get("interner-PUT");
        assert_eq!(put, "interner-PUT");
        assert_eq!(i.len(), 1, "full: started over, then kept the new one");
        let c = i.get("interner-GET");
        assert!(
            std::ptr::eq(a.as_str(), c.as_str()),
            "after the restart, the pinned copy again"
        );
        assert!(
            !i.get("interner-POST").is_pinned(),
            "seen once per run: counted"
        );
    }

    #[test]
    fn shared_str_reads_compares_and_serializes_as_a_plain_string() {
        let a = SharedStr::from("nginx");
        let b = a.clone();
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "clones share one copy"
        );
        assert_eq!(a, "nginx");
        assert_eq!(a, String::from("nginx"));
        assert_eq!(&*a, "nginx");
        assert_eq!(format!("{a} {a:?}"), "nginx \"nginx\"");
        assert!(
            SharedStr::from(String::new()).is_pinned(),
            "empty holds no allocation"
        );
        assert_eq!(SharedStr::from(""), SharedStr::default());
        assert_eq!(
            std::mem::size_of::<SharedStr>(),
            std::mem::size_of::<usize>(),
            "one pointer wide"
        );
        assert_eq!(serde_json::to_string(&a).expect("json"), "\"nginx\"");
        let back: SharedStr = serde_json::from_str("\"/system.slice\"").expect("json");
        assert_eq!(back, "/system.slice");
    }

    #[test]
    fn shared_strings_are_pinned_once_per_value_and_found_again_by_value() {
        let a = SharedStr::from("pin-test-api-name");
        let b = a.clone();
        assert!(!a.is_pinned());
        let c = a.share();
        assert!(
            a.is_pinned() && b.is_pinned() && c.is_pinned(),
            "pinned in place"
        );
        assert!(pinned_bytes() >= pin_cost("pin-test-api-name".len()));
        let again = SharedStr::from(String::from("pin-test-api-name"));
        assert!(
            std::ptr::eq(a.as_str(), again.as_str()),
            "a new string of a pinned value is the pinned copy"
        );
        assert!(!SharedStr::from("pin-test-never-shared").is_pinned());
    }

    #[test]
    fn pinning_stops_at_the_budget_and_a_second_copy_costs_its_own_bytes() {
        let mut t = PinTable::new(2 * pin_cost(8) + pin_cost(8) / 2);
        let a = ArcStr::from("budget-a");
        let a2 = ArcStr::from("budget-a");
        let b = ArcStr::from("budget-b");
        assert!(t.pin(&a) && ArcStr::is_static(&a));
        assert!(t.pin(&a), "pinned already: free");
        assert_eq!(t.bytes, pin_cost(8));
        assert!(
            t.pin(&a2) && ArcStr::is_static(&a2),
            "a second copy of a pinned value"
        );
        assert_eq!(
            (t.bytes, t.set.len()),
            (2 * pin_cost(8), 1),
            "one table entry per value"
        );
        assert!(!t.pin(&b), "over the budget");
        assert!(!ArcStr::is_static(&b), "left counted");
        assert_eq!(t.bytes, 2 * pin_cost(8));
    }
}
