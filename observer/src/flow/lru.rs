//! A small least-recently-used map: the connection and socket tables evict their oldest entry when full.
use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// Map with recency order; `touch`ing lookups move an entry to the most recent end.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    /// Keys are socket cookies and 4-tuples from the kernel: a fast non-cryptographic hash is enough.
    map: HashMap<K, (V, u64), foldhash::fast::RandomState>,
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
        self.map.get(k).map(|(v, _)| v)
    }

    /// Mutable access that marks the entry most recently used.
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let (v, stamp) = self.map.get_mut(k)?;
        self.clock += 1;
        let old = std::mem::replace(stamp, self.clock);
        self.order.remove(&old);
        self.order.insert(self.clock, k.clone());
        Some(v)
    }

    /// Mutable access that leaves the recency order alone.
    pub(crate) fn peek_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    /// Inserts (or replaces) as most recently used.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.clock += 1;
        if let Some((_, old)) = self.map.insert(k.clone(), (v, self.clock)) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, k);
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let (v, stamp) = self.map.remove(k)?;
        self.order.remove(&stamp);
        Some(v)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, k) = self.order.pop_first()?;
        let (v, _) = self.map.remove(&k)?;
        Some((k, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.order.values()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
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
        l.insert(1, "z");
        assert_eq!(l.peek(&1), Some(&"z"), "insert replaces");
        assert_eq!(l.len(), 1);
    }
}
