//! Topic ids and the file that ties a partition directory to one incarnation of its
//! topic: `DATA/<topic>-<partition>/partition.metadata`, as Kafka keeps it.
//!
//! ```text
//! version: 0
//! topic_id: 6f1c2a9e-53b4-4d0e-9a57-2f8c3e1d0b44
//! ```
//!
//! A topic gets a random id when it is created ([`TopicId::random`]); `corelog.meta`
//! records it and every partition directory of the topic carries it. A topic that is
//! deleted and created again under the same name gets a new id, so anything keyed by
//! the name alone (a lander's manifest, a retention registration, a directory a crash
//! left behind) can tell the old topic's state from the new one's. The id is written
//! in UUID text form (Kafka writes the same 16 bytes in base64).
//!
//! Invariants: the file is written durably (temp, fsync, rename, directory fsync)
//! before the partition takes an append; a directory whose id is not its topic's is
//! never served as the topic's data. This module only reads and writes the file.

use std::fmt;
use std::io::Write;
use std::path::Path;

/// The file name inside a partition directory.
pub const PARTITION_META_FILE: &str = "partition.metadata";
/// The format version written and read.
pub const PARTITION_META_VERSION: u32 = 0;

/// One incarnation of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub uuid::Uuid);

impl TopicId {
    /// A fresh random id (UUID version 4).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl serde::Serialize for TopicId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TopicId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for TopicId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let id = uuid::Uuid::try_parse(text).map_err(|e| format!("topic id {text:?}: {e}"))?;
        if id.is_nil() {
            return Err("topic id is the nil UUID".into());
        }
        Ok(Self(id))
    }
}

/// Reads the topic id a partition directory carries: `Ok(None)` when the directory
/// or its file does not exist, an error when the file is unreadable or malformed.
pub fn read(partition_dir: &Path) -> Result<Option<TopicId>, String> {
    let path = partition_dir.join(PARTITION_META_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    parse(&text).map(Some).map_err(|reason| format!("{}: {reason}", path.display()))
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<TopicId, String> {
    let mut version = None;
    let mut id = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((key, value)) = line.split_once(':') else { return Err(format!("bad line {line:?}")) };
        match key.trim() {
            "version" => {
                version = Some(value.trim().parse::<u32>().map_err(|_| format!("bad version {line:?}"))?)
            }
            "topic_id" => id = Some(value.trim().parse::<TopicId>()?),
            _ => return Err(format!("unknown key in {line:?}")),
        }
    }
    match (version, id) {
        (Some(PARTITION_META_VERSION), Some(id)) => Ok(id),
        (Some(other), _) if other != PARTITION_META_VERSION => {
            Err(format!("version {other} (this build reads {PARTITION_META_VERSION})"))
        }
        _ => Err("version or topic_id missing".into()),
    }
}

/// Writes the file into `partition_dir` (which must exist), durably.
pub fn write(partition_dir: &Path, id: TopicId) -> std::io::Result<()> {
    let temp = partition_dir.join(format!("{PARTITION_META_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    write!(file, "version: {PARTITION_META_VERSION}\ntopic_id: {id}\n")?;
    file.sync_all()?;
    std::fs::rename(&temp, partition_dir.join(PARTITION_META_FILE))?;
    std::fs::File::open(partition_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_written_id_when_read_then_the_same_id_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let id = TopicId::random();
        write(dir.path(), id).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(id));
        assert_ne!(TopicId::random(), id);
    }

    #[test]
    fn given_malformed_files_when_parsed_then_each_is_refused_with_a_reason() {
        let good = "version: 0\ntopic_id: 6f1c2a9e-53b4-4d0e-9a57-2f8c3e1d0b44\n";
        assert!(parse(good).is_ok());
        assert!(parse("version: 1\ntopic_id: 6f1c2a9e-53b4-4d0e-9a57-2f8c3e1d0b44\n")
            .unwrap_err()
            .contains("version 1"));
        assert!(parse("version: 0\n").unwrap_err().contains("missing"));
        assert!(parse("version: 0\ntopic_id: 00000000-0000-0000-0000-000000000000\n")
            .unwrap_err()
            .contains("nil"));
        assert!(parse("version: 0\ntopic_id: zz\n").is_err());
        assert!(parse("version 0\n").unwrap_err().contains("bad line"));
        assert!(parse("version: 0\ncolour: blue\n").unwrap_err().contains("unknown key"));
    }
}
