//! The catalog of a data directory: its topics (`corelog.meta`), their ids and partition
//! directories, and the broker-wide state every shard shares (memory budgets, the
//! connection count, producer ids, consumer groups).
//!
//! Data directory (layout version 1, see `docs/FORMATS.md`):
//! ```text
//! DATA/corelog.meta            "corelog-data-dir 1" + one "topic NAME PARTITIONS ID" line per topic
//! DATA/.lock                   flock held while an engine has the directory open
//! DATA/.clean-shutdown         present only between a clean shutdown and the next open
//! DATA/.opened                 when the engine last opened the directory (unclean recovery)
//! DATA/.deleting-…/            a partition directory being deleted (removed at open)
//! DATA/<topic>-<partition>/    segment files (see `segment`) and `partition.metadata`
//!                              (the topic id, see `partition_meta`)
//! ```
//!
//! Invariants: the metadata file is replaced atomically (write temp, fsync, rename,
//! fsync dir) before anything it names is used or after what it no longer names is
//! gone; a partition directory is served only when it carries its topic's id. This is
//! control-plane state behind a mutex; the data path never takes it.

use crate::error::EngineError;
use crate::partition_meta::TopicId;
use crate::sync::{AtomicI64, Ordering};
use crate::types::{now_ms, TopicPartition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Metadata file name inside the data directory.
pub const META_FILE: &str = "corelog.meta";
/// Clean-shutdown marker file name.
pub const CLEAN_MARKER_FILE: &str = ".clean-shutdown";
/// When the engine last opened the data directory (ms since the epoch, one line):
/// after an unclean stop, only segments written since then need a full recovery scan.
pub const OPENED_FILE: &str = ".opened";
/// Margin taken off [`OPENED_FILE`]'s time against clock steps and coarse mtimes.
pub const OPENED_SLACK_MS: i64 = 60_000;
/// Lock file name.
pub const LOCK_FILE: &str = ".lock";
/// Data directory layout version written to the metadata file.
pub const LAYOUT_VERSION: u32 = 1;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions per topic.
pub const PARTITIONS_MAX: u32 = 10_000;

/// The topics of a data directory, shared by the engine handle and every shard. This is
/// control-plane state behind a mutex; the data path never takes it.
#[derive(Debug)]
pub(crate) struct Catalog {
    data_dir: PathBuf,
    topics: Mutex<BTreeMap<String, TopicEntry>>,
    /// Most partitions of all topics together (see `Engine::open`).
    partition_limit: u32,
    /// The broker-wide budget of request bytes in memory.
    pub(crate) memory: Arc<tokio::sync::Semaphore>,
    /// The broker-wide budget of response bytes in memory (apart from requests', so
    /// clients that do not read their responses never stop others' requests).
    pub(crate) response_memory: Arc<tokio::sync::Semaphore>,
    /// Kafka connections open now.
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    next_producer_id: AtomicI64,
    /// Consumer groups and their committed offsets.
    pub(crate) groups: crate::groups::Coordinator,
    /// Who clients are and what they may do (users, ACLs, TLS; see the `security`
    /// crate).
    pub(crate) security: Arc<security::Security>,
}

impl Catalog {
    pub(crate) fn new(
        data_dir: PathBuf,
        topics: BTreeMap<String, TopicEntry>,
        partition_limit: u32,
        memory_budget: usize,
        offsets_retention_ms: u64,
        security: Arc<security::Security>,
    ) -> std::io::Result<Self> {
        // Producer ids only need to be unique across restarts: start from the clock
        // (ms × 256), which leaves 256 ids per millisecond of uptime before overlap.
        let next_producer_id = AtomicI64::new(now_ms().max(1) << 8);
        let groups = crate::groups::Coordinator::open(&data_dir, offsets_retention_ms)?;
        // Offsets committed for a topic that no longer exists (its delete was cut short
        // before they were dropped) must not apply to a topic created under its name.
        groups.retain_topics(|topic| topics.contains_key(topic))?;
        Ok(Self {
            data_dir,
            topics: Mutex::new(topics),
            partition_limit,
            memory: Arc::new(tokio::sync::Semaphore::new(memory_budget)),
            response_memory: Arc::new(tokio::sync::Semaphore::new(memory_budget)),
            connections: std::sync::atomic::AtomicUsize::new(0),
            next_producer_id,
            groups,
            security,
        })
    }

    /// A producer id no other producer of this data directory got.
    pub(crate) fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets a topic durably; returns its partition count.
    pub(crate) fn remove(&self, name: &str) -> Result<u32, EngineError> {
        let mut topics = self.topics.lock().expect("topic map lock");
        let Some(&TopicEntry { partitions, .. }) = topics.get(name) else {
            return Err(EngineError::UnknownPartition(TopicPartition::new(name, 0)));
        };
        let mut next = topics.clone();
        next.remove(name);
        write_meta(&self.data_dir, &next)
            .map_err(|reason| EngineError::DataDir { path: self.data_dir.clone(), reason })?;
        *topics = next;
        // As Kafka does: committed offsets of a deleted topic go with it (a failure here
        // is retried at the next open).
        if let Err(error) = self.groups.retain_topics(|topic| topic != name) {
            tracing::warn!(topic = name, "dropping committed offsets of the deleted topic: {error}");
        }
        Ok(partitions)
    }

    /// All topics and their partition counts.
    pub(crate) fn topics(&self) -> BTreeMap<String, u32> {
        let topics = self.topics.lock().expect("topic map lock");
        topics.iter().map(|(name, entry)| (name.clone(), entry.partitions)).collect()
    }

    /// Partition count of `topic`, if it exists.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.lock().expect("topic map lock").get(topic).map(|entry| entry.partitions)
    }

    /// The id of `topic`'s current incarnation, if it exists.
    pub(crate) fn topic_id(&self, topic: &str) -> Option<TopicId> {
        self.topics.lock().expect("topic map lock").get(topic).map(|entry| entry.id)
    }

    /// Records a new topic durably in the metadata file. The caller then opens its
    /// partitions on their owners.
    pub(crate) fn add(&self, name: &str, partitions: u32) -> Result<(), EngineError> {
        validate_topic(name, partitions)?;
        let mut topics = self.topics.lock().expect("topic map lock");
        if topics.contains_key(name) {
            return Err(EngineError::TopicExists(name.to_string()));
        }
        let held: u64 = topics.values().map(|entry| u64::from(entry.partitions)).sum();
        if held + u64::from(partitions) > u64::from(self.partition_limit) {
            return Err(EngineError::PartitionLimit { held, asked: partitions, limit: self.partition_limit });
        }
        let mut next = topics.clone();
        next.insert(name.to_string(), TopicEntry { partitions, id: TopicId::random() });
        write_meta(&self.data_dir, &next)
            .map_err(|reason| EngineError::DataDir { path: self.data_dir.clone(), reason })?;
        *topics = next;
        Ok(())
    }
}

pub(crate) fn validate_topic(name: &str, partitions: u32) -> Result<(), EngineError> {
    let legal = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !legal || name == "." || name == ".." {
        return Err(EngineError::InvalidTopic(format!(
            "{name:?}: 1..={TOPIC_NAME_BYTES_MAX} characters of [a-zA-Z0-9._-]"
        )));
    }
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(EngineError::InvalidTopic(format!(
            "{name}: {partitions} partitions (1..={PARTITIONS_MAX})"
        )));
    }
    Ok(())
}

/// What the catalog keeps of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicEntry {
    /// Partition count.
    pub(crate) partitions: u32,
    /// This incarnation's id (a topic created again under the name gets a new one).
    pub(crate) id: TopicId,
}

/// Reads `corelog.meta`: each topic's partition count and id (`None` for a topic
/// written before ids existed).
pub(crate) fn read_meta(path: &Path) -> Result<BTreeMap<String, (u32, Option<TopicId>)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header != format!("corelog-data-dir {LAYOUT_VERSION}") {
        return Err(format!("{}: unsupported header {header:?}", path.display()));
    }
    let mut topics = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, count, id) = match fields.as_slice() {
            ["topic", name, count] => (name, count, None),
            ["topic", name, count, id] => (name, count, Some(id.parse::<TopicId>()?)),
            _ => return Err(format!("{}: unreadable line {line:?}", path.display())),
        };
        let count: u32 = count.parse().map_err(|_| format!("bad partition count in {line:?}"))?;
        validate_topic(name, count).map_err(|e| e.to_string())?;
        if topics.insert(name.to_string(), (count, id)).is_some() {
            return Err(format!("{}: topic {name} listed twice", path.display()));
        }
    }
    Ok(topics)
}

/// Writes `name` in `dir` atomically and durably (temporary file, fsync, rename, fsync
/// of the directory).
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Parses a partition directory name `<topic>-<partition>`.
pub fn parse_partition_dir(name: &str) -> Option<TopicPartition> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition: u32 = partition.parse().ok().filter(|_| partition.bytes().all(|b| b.is_ascii_digit()))?;
    validate_topic(topic, 1).ok()?;
    Some(TopicPartition::new(topic, partition))
}

/// Deletes a partition's directory and everything keyed by it beside (query
/// checkpoints), durably. The directory is first renamed to a name no partition has
/// and that rename synced, so a crash part-way leaves either the whole partition or an
/// orphan the next open removes; its files are then unlinked on the deletion helper
/// thread ([`crate::io::delete_in_background`]: unlinking can take hundreds of ms).
pub(crate) fn remove_partition_files(data_dir: &Path, tp: &TopicPartition) -> std::io::Result<()> {
    let dir = data_dir.join(tp.dir_name());
    if dir.exists() {
        let doomed = data_dir.join(format!(".deleting-{}-{}", tp.dir_name(), now_ms()));
        std::fs::rename(&dir, &doomed)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        crate::io::delete_in_background(crate::io::Doomed::Dir(doomed));
    }
    if let Ok(queries) = std::fs::read_dir(data_dir.join(crate::query::QUERIES_DIR)) {
        for query in queries.flatten() {
            let checkpoint = query.path().join(format!("{}.json", tp.dir_name()));
            match std::fs::remove_file(&checkpoint) {
                Ok(()) => std::fs::File::open(query.path())?.sync_all()?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    std::fs::File::open(data_dir)?.sync_all()
}

/// Makes every partition directory the metadata names carry its topic's id: a missing
/// directory is created with it, a directory from before ids existed adopts it, and a
/// directory carrying another id (an earlier topic of the same name whose delete a
/// crash cut short) is deleted and created afresh: it is not this topic's data.
pub(crate) fn claim_partition_dirs(
    data_dir: &Path,
    topics: &BTreeMap<String, TopicEntry>,
) -> Result<(), String> {
    for (topic, entry) in topics {
        for partition in 0..entry.partitions {
            let tp = TopicPartition::new(topic, partition);
            claim_partition_dir(data_dir, &tp, entry.id)?;
        }
    }
    Ok(())
}

/// [`claim_partition_dirs`] for one partition.
pub(crate) fn claim_partition_dir(data_dir: &Path, tp: &TopicPartition, id: TopicId) -> Result<(), String> {
    let dir = data_dir.join(tp.dir_name());
    let error = |e: std::io::Error| format!("{}: {e}", dir.display());
    match crate::partition_meta::read(&dir)? {
        Some(found) if found == id => return Ok(()),
        Some(found) => {
            tracing::warn!(partition = %tp, %found, topic_id = %id, "removing the files of an earlier topic of the same name");
            remove_partition_files(data_dir, tp).map_err(error)?;
        }
        None => {}
    }
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(error)?;
    crate::partition_meta::write(&dir, id).map_err(error)?;
    if created {
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(error)?;
    }
    Ok(())
}

/// Removes partition directories the metadata does not name (a topic delete cut short,
/// or partitions of a topic that no longer exists) and half-deleted ones.
pub(crate) fn remove_orphan_partitions(
    data_dir: &Path,
    topics: &BTreeMap<String, TopicEntry>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(data_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(".deleting-") {
            std::fs::remove_dir_all(entry.path())?;
            continue;
        }
        let Some(tp) = parse_partition_dir(&name) else { continue };
        if topics.get(&*tp.topic).is_none_or(|entry| tp.partition >= entry.partitions) {
            tracing::warn!(partition = %tp, "removing the files of a partition the metadata does not name");
            remove_partition_files(data_dir, &tp)?;
        }
    }
    Ok(())
}

pub(crate) fn write_meta(data_dir: &Path, topics: &BTreeMap<String, TopicEntry>) -> Result<(), String> {
    use std::io::Write;
    let mut text = format!("corelog-data-dir {LAYOUT_VERSION}\n");
    for (name, entry) in topics {
        text.push_str(&format!("topic {name} {} {}\n", entry.partitions, entry.id));
    }
    let temp = data_dir.join(format!("{META_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, data_dir.join(META_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("writing metadata: {e}"))
}
