//! A small least-recently-used map: the connection and socket tables evict their oldest entry when full.
//!
//! Lookups only bump a stamp (a hash lookup, no allocation): they are on the per-record path. There is no standing
//! recency index (a B-tree of stamps cost 30-80 bytes per entry, a quarter of an idle connection's memory): when
//! the oldest entry is asked for, which happens only when a table is full or the agent shuts down, one scan of the
//! table picks its oldest [`BATCH_SHARE`]th, in order, and the evictions that follow take from that list. An entry
//! on the list that was used since is skipped (it is now among the newest), so every pop still returns the least
//! recently used entry; the scan's cost is shared by the evictions it serves.
use std::{
    collections::{hash_map::Entry, BinaryHeap, HashMap, VecDeque},
    hash::Hash,
};

/// One scan of a full table lines up this share of its entries (at least one, at most [`BATCH_MAX`]) for eviction.
const BATCH_SHARE: usize = 64;
const BATCH_MAX: usize = 4096;

#[derive(Debug)]
struct Slot<V> {
    value: V,
    /// Last use.
    used: u64,
}

/// A key with its stamp, ordered by the stamp alone (stamps are unique).
struct Stamped<K>(u64, K);

impl<K> PartialEq for Stamped<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K> Eq for Stamped<K> {}
impl<K> PartialOrd for Stamped<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Stamped<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Map with recency order; `get_mut` marks an entry most recently used.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    /// Keys are socket cookies and 4-tuples from the kernel: a fast non-cryptographic hash is enough.
    map: HashMap<K, Slot<V>, foldhash::fast::RandomState>,
    /// The oldest entries at the last scan, oldest first, with their stamp then.
    oldest: VecDeque<(u64, K)>,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            map: HashMap::default(),
            oldest: VecDeque::new(),
            clock: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    pub(crate) fn peek(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|s| &s.value)
    }

    /// Mutable access that marks the entry most recently used (the tables use [`Lru::get_or_try_insert_with`]).
    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let slot = self.map.get_mut(k)?;
        self.clock += 1;
        slot.used = self.clock;
        Some(&mut slot.value)
    }

    /// Mutable access that leaves the recency order alone.
    pub(crate) fn peek_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|s| &mut s.value)
    }

    /// Inserts (or replaces) as most recently used.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.clock += 1;
        let slot = Slot {
            value: v,
            used: self.clock,
        };
        self.map.insert(k, slot);
    }

    /// Mutable access that marks the entry most recently used, inserting `make()` first when `k` is absent: one
    /// hash lookup either way.
    pub(crate) fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        match self.get_or_try_insert_with(k, || Ok::<V, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`Lru::get_or_insert_with`] where `make` may decline: its error is returned, and `k` stays absent.
    pub(crate) fn get_or_try_insert_with<E>(
        &mut self,
        k: K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<&mut V, E> {
        self.clock += 1;
        let clock = self.clock;
        let slot = match self.map.entry(k) {
            Entry::Occupied(e) => {
                let slot = e.into_mut();
                slot.used = clock;
                slot
            }
            Entry::Vacant(e) => e.insert(Slot {
                value: make()?,
                used: clock,
            }),
        };
        Ok(&mut slot.value)
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|s| s.value)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        loop {
            let Some((used, k)) = self.oldest.pop_front() else {
                if self.map.is_empty() {
                    return None;
                }
                self.line_up_oldest();
                continue;
            };
            // Still there and not used since the scan: nothing is older (entries used or inserted since are newer
            // than every entry the scan saw).
            if self.map.get(&k).is_some_and(|s| s.used == used) {
                let slot = self.map.remove(&k)?;
                return Some((k, slot.value));
            }
        }
    }

    /// One scan: the table's oldest entries (a [`BATCH_SHARE`]th of them) into `oldest`, oldest first.
    fn line_up_oldest(&mut self) {
        let n = (self.map.len() / BATCH_SHARE).clamp(1, BATCH_MAX);
        // The n smallest stamps: a max-heap of n, its top the newest kept so far.
        let mut heap: BinaryHeap<Stamped<&K>> = BinaryHeap::with_capacity(n + 1);
        for (k, s) in &self.map {
            if heap.len() < n {
                heap.push(Stamped(s.used, k));
            } else if heap.peek().is_some_and(|top| s.used < top.0) {
                heap.pop();
                heap.push(Stamped(s.used, k));
            }
        }
        self.oldest = heap
            .into_sorted_vec()
            .into_iter()
            .map(|Stamped(used, k)| (used, k.clone()))
            .collect();
    }

    /// Every key, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|s| &s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_least_recently_used() {
        let mut l = Lru::new();
        l.insert(1, "a");
        l.insert(2, "b");
        l.insert(3, "c");
        assert!(l.get_mut(&1).is_some(), "1 is present");
        assert_eq!(l.pop_oldest(), Some((2, "b")), "2 is now the oldest");
        assert_eq!(l.remove(&3), Some("c"));
        assert_eq!(l.len(), 1);
        assert_eq!(l.keys().copied().collect::<Vec<_>>(), vec![1]);
        l.insert(4, "d");
        l.insert(5, "e");
        assert!(l.get_mut(&1).is_some());
        assert!(l.get_mut(&4).is_some());
        assert_eq!(l.pop_oldest(), Some((5, "e")), "1 and 4 were used after 5");
        assert_eq!(l.pop_oldest(), Some((1, "a")));
        assert_eq!(l.pop_oldest(), Some((4, "d")));
        assert_eq!(l.pop_oldest(), None);
        l.insert(1, "a");
        l.insert(1, "z");
        assert_eq!(l.peek(&1), Some(&"z"), "insert replaces");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn pops_in_recency_order_across_scans() {
        // More entries than one scan lines up, some used again (in and out of a lined-up batch), some removed.
        let mut l = Lru::new();
        for k in 0..1000u32 {
            l.insert(k, k);
        }
        let first = l.pop_oldest();
        assert_eq!(first, Some((0, 0)));
        // 1..=15 are lined up by that scan: use 3 again, remove 5, re-insert 7 (now the newest).
        assert!(l.get_mut(&3).is_some());
        assert_eq!(l.remove(&5), Some(5));
        l.remove(&7);
        l.insert(7, 70);
        for k in (100..200).step_by(10) {
            assert!(l.get_mut(&k).is_some());
        }
        let mut want: Vec<u32> = (1..1000)
            .filter(|k| ![3, 5, 7].contains(k) && !(100..200).step_by(10).any(|u| u == *k))
            .collect();
        want.extend([3, 7]);
        want.extend((100..200).step_by(10));
        let got: Vec<u32> = std::iter::from_fn(|| l.pop_oldest().map(|(k, _)| k)).collect();
        assert_eq!(got, want);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn get_or_insert_with_inserts_once_and_counts_as_a_use() {
        let mut l = Lru::new();
        *l.get_or_insert_with(1, || 10) += 1;
        l.insert(2, 20);
        assert_eq!(
            *l.get_or_insert_with(1, || 99),
            11,
            "present: make is not used"
        );
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.pop_oldest(),
            Some((2, 20)),
            "1 was used after 2 was inserted"
        );
        assert_eq!(l.pop_oldest(), Some((1, 11)));
        assert_eq!(l.pop_oldest(), None);
        // A maker that declines leaves the key absent and says why; a present key does not ask it.
        assert_eq!(l.get_or_try_insert_with(3, || Err("no")), Err("no"));
        assert_eq!(l.len(), 0);
        l.insert(3, 30);
        l.insert(4, 40);
        assert_eq!(l.get_or_try_insert_with(3, || Err("no")), Ok(&mut 30));
        assert_eq!(
            l.pop_oldest(),
            Some((4, 40)),
            "3 was used after 4 was inserted"
        );
    }
}
