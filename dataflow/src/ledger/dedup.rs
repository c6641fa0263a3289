//! De-duplication by `(sku, event_id)` over generations of log time.
//!
//! An applied event's key goes into the generation `log_time / window`. A later sighting is a
//! repeat when its key is in its own generation or the one before: so a repeat less than
//! `window` of log time after the original is always dropped, one at least twice `window` after
//! it is applied again, and the decision depends only on the two records' log times, never on
//! when they were read. A generation is dropped once the log frontier is two generations past
//! it: no record that could still arrive would look at it.

use hashbrown::HashSet;
use std::collections::BTreeMap;
use stockflow_types::Millis;

/// Each generation is split this many ways by the key's low bits, so that a set doubling its
/// table (a copy of every entry, all at once) stalls the worker for 1/64 of the time: with one
/// set of millions of ids, a doubling held the worker for tens of milliseconds and showed in
/// lookup tails (docs/benchmarks.md).
pub(crate) const SHARDS: usize = 64;

/// The 128-bit identity of `(sku, event_id)`: the SKU's hash (which decides its owner worker)
/// in the high half, so that a checkpoint's keys can be routed to the owners of another number
/// of workers; the event id's hash seeded with it in the low half.
pub(crate) fn key(sku_hash: u64, event_id: &str) -> u128 {
    let low = xxhash_rust::xxh3::xxh3_64_with_seed(event_id.as_bytes(), sku_hash);
    (u128::from(sku_hash) << 64) | u128::from(low)
}

/// The SKU hash a key was made with.
pub(crate) fn sku_hash_of(key: u128) -> u64 {
    (key >> 64) as u64
}

pub(crate) fn shard(key: u128) -> usize {
    (key as u64 as usize) % SHARDS
}

/// The remembered keys, by generation.
#[derive(Debug)]
pub(crate) struct Dedup {
    window: u64,
    pub generations: BTreeMap<u64, Vec<HashSet<u128>>>,
}

impl Dedup {
    pub fn new(window: u64) -> Self {
        Dedup {
            window: window.max(1),
            generations: BTreeMap::new(),
        }
    }

    pub fn generation(&self, log_time: Millis) -> u64 {
        log_time / self.window
    }

    /// Whether an event with `key` at `log_time` repeats one applied before.
    pub fn is_repeat(&self, key: u128, log_time: Millis) -> bool {
        let from = self.generation(log_time).saturating_sub(1);
        let i = shard(key);
        self.generations
            .range(from..)
            .any(|(_, sets)| sets[i].contains(&key))
    }

    /// Remembers an applied event; returns its generation.
    pub fn insert(&mut self, key: u128, log_time: Millis) -> u64 {
        let g = self.generation(log_time);
        if !self.generations.contains_key(&g) {
            // A new generation starts at the size of the latest one: no doublings.
            let sized = match self.generations.last_key_value() {
                Some((_, sets)) => sets
                    .iter()
                    .map(|s| HashSet::with_capacity(s.len()))
                    .collect(),
                None => (0..SHARDS).map(|_| HashSet::new()).collect(),
            };
            self.generations.insert(g, sized);
        }
        self.generations.get_mut(&g).expect("inserted above")[shard(key)].insert(key);
        g
    }

    /// The generations that no record at or after log time `frontier` can look at.
    pub fn expired(&self, frontier: Millis) -> Vec<u64> {
        let keep_from = self.generation(frontier).saturating_sub(1);
        self.generations
            .range(..keep_from)
            .map(|(g, _)| *g)
            .collect()
    }

    pub fn drop_generation(&mut self, g: u64) {
        self.generations.remove(&g);
    }

    /// Restores keys of generation `g`.
    pub fn extend(&mut self, g: u64, keys: impl IntoIterator<Item = u128>) {
        let sets = self
            .generations
            .entry(g)
            .or_insert_with(|| (0..SHARDS).map(|_| HashSet::new()).collect());
        for k in keys {
            sets[shard(k)].insert(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_at_least_one_window_of_log_time() {
        let mut d = Dedup::new(100);
        let k = key(1, "e");
        assert!(!d.is_repeat(k, 50));
        d.insert(k, 50);
        assert!(d.is_repeat(k, 50));
        assert!(!d.is_repeat(key(2, "e"), 50), "ids are per SKU");
        assert!(d.is_repeat(k, 149), "less than a window later");
        assert!(d.is_repeat(k, 199), "the next generation still remembers");
        assert!(!d.is_repeat(k, 200), "two generations later: applied again");
        assert!(
            d.is_repeat(k, 10),
            "an earlier log time (another partition) still sees it"
        );
        assert!(d.expired(199).is_empty());
        assert_eq!(d.expired(200), vec![0]);
    }

    #[test]
    fn keys_carry_their_sku_hash() {
        let k = key(0xdead_beef, "event");
        assert_eq!(sku_hash_of(k), 0xdead_beef);
        assert_ne!(key(1, "a"), key(1, "b"));
    }
}
