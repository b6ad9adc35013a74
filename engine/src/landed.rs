//! Landed-offset registrations: the retention handshake between the engine and the
//! landers that read its segment files.
//!
//! A lander (`corelog land`, a separate process) writes one file,
//! `DATA/__landers/<lander id>.landed`, replaced atomically (temp, fsync, rename,
//! directory fsync) after it advances its manifests:
//!
//! ```text
//! corelog-landed 1
//! <topic> <partition> <next offset not yet landed> [<topic id>]
//! ...
//! ```
//!
//! The topic id (see [`crate::partition_meta`]) names the incarnation of the topic the
//! lander landed: a line whose id is not the topic's current one is about a topic of
//! the same name that was deleted, and is ignored (a line without an id, written before
//! ids existed, counts for whatever topic has the name).
//!
//! With `retain_until_landed`, retention never deletes a segment holding an offset at
//! or past the smallest `next offset` any registration gives for that partition; a
//! partition no registration mentions keeps everything (nothing has landed it).
//!
//! This is the only thing a lander writes under the data directory. The engine only
//! reads these files; an unreadable or malformed one is skipped with a warning, which
//! can only make retention keep more (never delete more) than it would otherwise.

use crate::partition_meta::TopicId;
use crate::TopicPartition;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Directory under the data dir that holds the registrations.
pub const LANDERS_DIR: &str = "__landers";
/// First line of a registration file, version 1.
pub const REGISTRATION_HEADER: &str = "corelog-landed 1";
/// File name extension of a registration.
pub const REGISTRATION_EXTENSION: &str = "landed";

/// What one lander registers: per partition, the first offset not yet landed and the
/// id of the topic landed (when its source told it).
pub type Registration = BTreeMap<(String, u32), (i64, Option<TopicId>)>;

/// Writes (atomically replaces) the registration of lander `lander_id`.
/// `landed` maps each partition to the first offset not yet landed and the id of the
/// topic landed (when the source told it).
pub fn write_registration(data_dir: &Path, lander_id: &str, landed: &Registration) -> std::io::Result<()> {
    assert!(!lander_id.is_empty() && lander_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let dir = data_dir.join(LANDERS_DIR);
    let created = !dir.exists();
    std::fs::create_dir_all(&dir)?;
    if created {
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    let mut text = String::with_capacity(32 + landed.len() * 32);
    text.push_str(REGISTRATION_HEADER);
    text.push('\n');
    for ((topic, partition), (next_offset, id)) in landed {
        assert!(*next_offset >= 0);
        match id {
            Some(id) => text.push_str(&format!("{topic} {partition} {next_offset} {id}\n")),
            None => text.push_str(&format!("{topic} {partition} {next_offset}\n")),
        }
    }
    let path = dir.join(format!("{lander_id}.{REGISTRATION_EXTENSION}"));
    let temp = dir.join(format!("{lander_id}.{REGISTRATION_EXTENSION}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, &path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Parses one registration file's text.
pub fn parse_registration(text: &str) -> Result<Vec<(TopicPartition, i64, Option<TopicId>)>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(REGISTRATION_HEADER) {
        return Err(format!("first line is not {REGISTRATION_HEADER:?}"));
    }
    lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (topic, partition, offset, id) = match fields[..] {
                [topic, partition, offset] => (topic, partition, offset, None),
                [topic, partition, offset, id] => (topic, partition, offset, Some(id)),
                _ => return Err(format!("bad line {line:?}")),
            };
            let id = id.map(|id| id.parse::<TopicId>().map_err(|e| format!("bad topic id in {line:?}: {e}")));
            let id = id.transpose()?;
            let partition = partition.parse::<u32>().map_err(|_| format!("bad partition in {line:?}"))?;
            let offset = offset.parse::<i64>().ok().filter(|o| *o >= 0);
            let offset = offset.ok_or_else(|| format!("bad offset in {line:?}"))?;
            Ok((TopicPartition { topic: topic.into(), partition }, offset, id))
        })
        .collect()
}

/// The retention floor of every registered partition: the smallest next offset any
/// registration gives for the topic's current incarnation (`current_id`). Malformed
/// files are skipped with a warning.
pub fn read_floors(
    data_dir: &Path,
    current_id: impl Fn(&str) -> Option<TopicId>,
) -> HashMap<TopicPartition, i64> {
    let mut floors: HashMap<TopicPartition, i64> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join(LANDERS_DIR)) else { return floors };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(REGISTRATION_EXTENSION) {
            continue;
        }
        let parsed =
            std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse_registration(&t));
        match parsed {
            Ok(registered) => {
                for (tp, offset, id) in registered {
                    if id.is_some_and(|id| current_id(&tp.topic) != Some(id)) {
                        continue; // about a deleted topic of the same name
                    }
                    floors.entry(tp).and_modify(|floor| *floor = (*floor).min(offset)).or_insert(offset);
                }
            }
            Err(error) => tracing::warn!("{}: ignored: {error}", path.display()),
        }
    }
    floors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_two_landers_when_floors_read_then_each_partition_takes_the_smaller_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = BTreeMap::new();
        a.insert(("payments".to_string(), 0), (100, None));
        a.insert(("payments".to_string(), 1), (7, None));
        let mut b = BTreeMap::new();
        b.insert(("payments".to_string(), 0), (40, None));
        write_registration(dir.path(), "a", &a).unwrap();
        write_registration(dir.path(), "b", &b).unwrap();
        std::fs::write(dir.path().join(LANDERS_DIR).join("junk.landed"), "nonsense\n").unwrap();
        let floors = read_floors(dir.path(), |_| None);
        assert_eq!(floors.len(), 2);
        assert_eq!(floors[&TopicPartition { topic: "payments".into(), partition: 0 }], 40);
        assert_eq!(floors[&TopicPartition { topic: "payments".into(), partition: 1 }], 7);
    }

    #[test]
    fn given_a_registration_of_a_deleted_topic_when_floors_read_then_only_the_current_topic_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (old, current) = (TopicId::random(), TopicId::random());
        let mut landed = BTreeMap::new();
        landed.insert(("payments".to_string(), 0), (5_000, Some(old)));
        landed.insert(("orders".to_string(), 0), (30, Some(current)));
        write_registration(dir.path(), "a", &landed).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LANDERS_DIR).join("a.landed")).unwrap();
        assert!(text.contains(&format!("payments 0 5000 {old}\n")), "{text}");
        let floors = read_floors(dir.path(), |_| Some(current));
        let payments = TopicPartition { topic: "payments".into(), partition: 0 };
        assert!(
            !floors.contains_key(&payments),
            "a deleted topic's landed offset must not let retention delete"
        );
        assert_eq!(floors[&TopicPartition { topic: "orders".into(), partition: 0 }], 30);
        assert_eq!(read_floors(dir.path(), |_| Some(old))[&payments], 5_000);
    }

    #[test]
    fn given_malformed_lines_when_parsed_then_error_names_the_line() {
        assert!(parse_registration("corelog-landed 1\nt 0 -5\n").unwrap_err().contains("bad offset"));
        assert!(parse_registration("corelog-landed 2\n").is_err());
        assert!(parse_registration("corelog-landed 1\nt x 5\n").unwrap_err().contains("bad partition"));
        assert!(parse_registration("corelog-landed 1\nt 0 5 not-an-id\n")
            .unwrap_err()
            .contains("bad topic id"));
        assert!(parse_registration("corelog-landed 1\nt 0 5 a b\n").unwrap_err().contains("bad line"));
    }
}
