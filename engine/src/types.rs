//! The engine's shared vocabulary, at the bottom of every layer: topic-partitions and
//! their owning shard, the flush modes, where an append landed, and the wall clock.
//!
//! Invariants: [`TopicPartition::owner`] is a pure function of the name, the partition
//! and the shard count (stable across restarts). Nothing here does I/O or imports
//! another module of the crate.

use std::fmt;
use std::sync::Arc;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushMode {
    /// After an fdatasync that covers it; concurrent appends share syncs.
    #[default]
    Group,
    /// After an fdatasync of its own.
    Always,
    /// After the write reaches the page cache.
    Os,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "group" => Ok(Self::Group),
            "always" => Ok(Self::Always),
            "os" => Ok(Self::Os),
            other => Err(format!("unknown flush mode {other:?} (group, always, os)")),
        }
    }
}

impl fmt::Display for FlushMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Group => "group",
            Self::Always => "always",
            Self::Os => "os",
        })
    }
}

/// A topic name and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// A topic-partition.
    pub fn new(topic: &str, partition: u32) -> Self {
        Self { topic: topic.into(), partition }
    }
    /// Directory name: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
    /// The shard that owns this partition among `shards`: FNV-1a of the topic plus
    /// the partition number, so one topic's partitions spread round-robin. Stable
    /// across restarts with the same shard count.
    pub fn owner(&self, shards: usize) -> usize {
        assert!(shards > 0);
        let hash = self
            .topic
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (hash.wrapping_add(u64::from(self.partition)) % shards as u64) as usize
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
}
