//! A small least-recently-used map: the connection and socket tables evict their oldest entry when full.
//!
//! Lookups only bump a stamp (a hash lookup, no allocation): they are on the per-record path. The recency order
//! (a BTreeMap from stamp to key) is brought up to date lazily, when the oldest entry is asked for, which happens only
//! when a table is full or the agent shuts down.
use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap},
    hash::Hash,
};

#[derive(Debug)]
struct Slot<V> {
    value: V,
    /// Last use.
    used: u64,
    /// Where the key sits in `order` (its last use when it was last placed there).
    placed: u64,
}

/// Map with recency order; `get_mut` marks an entry most recently used.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    /// Keys are socket cookies and 4-tuples from the kernel: a fast non-cryptographic hash is enough.
    map: HashMap<K, Slot<V>, foldhash::fast::RandomState>,
    order: BTreeMap<u64, K>,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            map: HashMap::default(),
            order: BTreeMap::new(),
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

    /// Mutable access that marks the entry most recently used.
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
            placed: self.clock,
        };
        if let Some(old) = self.map.insert(k.clone(), slot) {
            self.order.remove(&old.placed);
        }
        self.order.insert(self.clock, k);
    }

    /// Mutable access that marks the entry most recently used, inserting `make()` first when `k` is absent: one
    /// hash lookup either way.
    pub(crate) fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        let clock = self.clock;
        match self.map.entry(k) {
            Entry::Occupied(e) => {
                let slot = e.into_mut();
                slot.used = clock;
                &mut slot.value
            }
            Entry::Vacant(e) => {
                self.order.insert(clock, e.key().clone());
                let slot = e.insert(Slot {
                    value: make(),
                    used: clock,
                    placed: clock,
                });
                &mut slot.value
            }
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let slot = self.map.remove(k)?;
        self.order.remove(&slot.placed);
        Some(slot.value)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((placed, k)) = self.order.pop_first() {
            let Some(slot) = self.map.get_mut(&k) else {
                continue; // not reachable: every key in `order` is in `map`
            };
            if slot.used == placed {
                let slot = self.map.remove(&k)?;
                return Some((k, slot.value));
            }
            // Used since it was placed: put it where its last use says, and look again.
            slot.placed = slot.used;
            self.order.insert(slot.used, k);
        }
        None
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
    }
}
