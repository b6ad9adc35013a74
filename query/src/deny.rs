//! Deny-lists: the ids a query's deny rules look up, replaced whole when a new list
//! is loaded, read by shards without taking a lock on the data path.
//!
//! A [`DenyList`] is one slot shared by every shard: a loader (the engine's topic
//! follower, or the embedding program for a Parquet path) [`DenyList::publish`]es a
//! new [`DenySet`]; each shard keeps its own `Arc` and checks the slot's generation
//! (one relaxed atomic load per read chunk) to pick up a new one. The mutex is taken
//! only when the generation changed.
//!
//! Invariant: a published set is immutable; generations only grow.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An immutable set of denied ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DenySet {
    ids: HashSet<Box<str>>,
}

impl DenySet {
    /// A set of these ids.
    pub fn from_ids(ids: impl IntoIterator<Item = String>) -> Self {
        Self { ids: ids.into_iter().map(String::into_boxed_str).collect() }
    }

    /// Whether `id` is denied.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is denied.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The slot a query's deny-list is published to.
#[derive(Debug, Default)]
pub struct DenyList {
    generation: AtomicU64,
    current: Mutex<Arc<DenySet>>,
}

impl DenyList {
    /// Replaces the list; readers see it on their next [`DenyReader::refresh`].
    pub fn publish(&self, set: DenySet) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Arc::new(set);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many lists were published.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The list now.
    pub fn current(&self) -> Arc<DenySet> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A shard's view of a [`DenyList`].
#[derive(Debug)]
pub struct DenyReader {
    list: Arc<DenyList>,
    generation: u64,
    set: Arc<DenySet>,
}

impl DenyReader {
    /// A reader of `list`, holding its current set.
    pub fn new(list: Arc<DenyList>) -> Self {
        let generation = list.generation();
        let set = list.current();
        Self { list, generation, set }
    }

    /// Picks up a newer list if one was published; true when it did.
    pub fn refresh(&mut self) -> bool {
        let generation = self.list.generation();
        if generation == self.generation {
            return false;
        }
        self.set = self.list.current();
        self.generation = generation;
        true
    }

    /// The set in use.
    pub fn set(&self) -> &DenySet {
        &self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_new_list_when_published_then_readers_switch_on_refresh_only() {
        let list = Arc::new(DenyList::default());
        let mut reader = DenyReader::new(list.clone());
        assert!(!reader.set().contains("c1"));
        list.publish(DenySet::from_ids(["c1".to_string()]));
        assert!(!reader.set().contains("c1"), "a reader keeps its set until it refreshes");
        assert!(reader.refresh());
        assert!(reader.set().contains("c1"));
        assert!(!reader.refresh());
        list.publish(DenySet::default());
        assert!(reader.refresh());
        assert!(reader.set().is_empty());
    }
}
