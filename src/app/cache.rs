//! The results cache: bounded by bytes, least recently used entries evicted first (they are
//! recomputed when asked for again), and forgetting a file's results when the file changes.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies a file's contents without reading them: a changed file gets new results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            size: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

struct Entry<V> {
    value: V,
    bytes: u64,
    /// Tick of the last use (insert or lookup).
    used: Cell<u64>,
}

/// A map whose values weigh bytes; over `limit`, the least recently used values go.
pub struct LruCache<K, V> {
    entries: HashMap<K, Entry<V>>,
    limit: u64,
    total: u64,
    tick: Cell<u64>,
    /// The identity each input file had when its results were computed.
    inputs: HashMap<PathBuf, FileIdentity>,
}

impl<K: Eq + Hash + Clone, V> LruCache<K, V> {
    pub fn new(limit: u64) -> Self {
        Self {
            entries: HashMap::new(),
            limit,
            total: 0,
            tick: Cell::new(0),
            inputs: HashMap::new(),
        }
    }

    fn next_tick(&self) -> u64 {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        t
    }

    /// The value for `key`, marking it as just used.
    pub fn get(&self, key: &K) -> Option<&V> {
        let entry = self.entries.get(key)?;
        entry.used.set(self.next_tick());
        Some(&entry.value)
    }

    /// Every value whose key passes `keep` (without marking them used).
    pub fn values_where<'a>(
        &'a self,
        keep: impl Fn(&K) -> bool + 'a,
    ) -> impl Iterator<Item = &'a V> {
        self.entries
            .iter()
            .filter(move |(k, _)| keep(k))
            .map(|(_, e)| &e.value)
    }

    /// Stores `value`, then evicts the least recently used others until the total fits the limit
    /// (the newest value always stays, even alone over the limit). Returns how many were evicted.
    pub fn insert(&mut self, key: K, value: V, bytes: u64) -> usize {
        let used = Cell::new(self.next_tick());
        if let Some(old) = self
            .entries
            .insert(key.clone(), Entry { value, bytes, used })
        {
            self.total -= old.bytes;
        }
        self.total += bytes;
        let mut evicted = 0;
        while self.total > self.limit {
            let oldest = self
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.used.get())
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some(gone) = self.entries.remove(&oldest) {
                self.total -= gone.bytes;
                evicted += 1;
            }
        }
        evicted
    }

    /// Records the identity `input` has now; if it differs from the one its results were
    /// computed for, drops those results (`of_input` tells which keys belong to the file).
    pub fn check_input(
        &mut self,
        input: &Path,
        identity: Option<FileIdentity>,
        of_input: impl Fn(&K) -> bool,
    ) -> usize {
        let changed = match (self.inputs.get(input), identity) {
            (Some(before), Some(now)) => *before != now,
            (Some(_), None) => true,
            (None, _) => false,
        };
        match identity {
            Some(now) => {
                self.inputs.insert(input.to_path_buf(), now);
            }
            None => {
                self.inputs.remove(input);
            }
        }
        if !changed {
            return 0;
        }
        let stale: Vec<K> = self
            .entries
            .keys()
            .filter(|k| of_input(k))
            .cloned()
            .collect();
        for key in &stale {
            if let Some(gone) = self.entries.remove(key) {
                self.total -= gone.bytes;
            }
        }
        stale.len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_results_go_first_when_over_the_limit() {
        let mut cache = LruCache::new(300);
        cache.insert("a", 1, 100);
        cache.insert("b", 2, 100);
        cache.insert("c", 3, 100);
        // Using "a" makes "b" the oldest.
        assert_eq!(cache.get(&"a"), Some(&1));
        assert_eq!(cache.insert("d", 4, 100), 1);
        assert!(cache.get(&"b").is_none());
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.total_bytes(), 300);
        // A value larger than the limit stays alone.
        assert_eq!(cache.insert("huge", 5, 1000), 3);
        assert_eq!(cache.get(&"huge"), Some(&5));
        assert_eq!(cache.len(), 1);
        // Replacing a key does not count it twice.
        cache.insert("huge", 6, 10);
        assert_eq!(cache.total_bytes(), 10);
    }

    #[test]
    fn a_changed_file_loses_its_results() {
        let mut cache = LruCache::new(u64::MAX);
        let clip = Path::new("/clips/a.mp4");
        let first = FileIdentity {
            size: 10,
            modified: None,
        };
        let of_clip = |k: &(&str, &str)| k.0 == "/clips/a.mp4";
        assert_eq!(cache.check_input(clip, Some(first), of_clip), 0);
        cache.insert(("/clips/a.mp4", "CV"), 1, 1);
        cache.insert(("/clips/b.mp4", "CV"), 2, 1);
        // Same identity: kept.
        assert_eq!(cache.check_input(clip, Some(first), of_clip), 0);
        assert_eq!(cache.len(), 2);
        // Rewritten: its results go, the other file's stay.
        let rewritten = FileIdentity { size: 11, ..first };
        assert_eq!(cache.check_input(clip, Some(rewritten), of_clip), 1);
        assert!(cache.get(&("/clips/a.mp4", "CV")).is_none());
        assert_eq!(cache.get(&("/clips/b.mp4", "CV")), Some(&2));
    }
}
