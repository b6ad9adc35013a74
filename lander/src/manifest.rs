//! The landing manifest of one partition, `OUT/<topic>/_landed/<partition>.json`:
//! the single source of truth for what has landed.
//!
//! ```json
//! {"version":1,"topic":"payments","partition":3,"next_offset":120000,"landed_records":119998,"landed_files":12,"updated_ms":1764000000000}
//! ```
//!
//! `next_offset` is the first offset not landed: every offset below it is in exactly
//! one part file (or has no record: control records, offsets deleted by retention
//! before landing), and no part file of the partition holds an offset at or past it
//! once recovery has run. The manifest is replaced atomically after the part files it
//! covers are durable. Version 1; a reader refuses other versions.
//!
//! `topic_id` (present once the source told one) names the incarnation of the topic
//! that landed: when the source's topic id differs, the topic was deleted and created
//! again under its name, and what landed of the old one is set aside (see
//! [`crate::REPLACED_DIR`]) before the new one lands from offset 0. A manifest without
//! it (written before ids existed, or from a source that has none) adopts the first id
//! the source reports.

use engine::partition_meta::TopicId;
use serde::{Deserialize, Serialize};

/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One partition's landing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The incarnation of the topic that landed, when the source tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<TopicId>,
    /// First offset not landed.
    pub next_offset: i64,
    /// Records landed so far.
    pub landed_records: u64,
    /// Part files written so far.
    pub landed_files: u64,
    /// When the manifest was last advanced (ms since the epoch).
    pub updated_ms: i64,
}

impl Manifest {
    /// The state before anything landed.
    pub fn empty(topic: &str, partition: u32, topic_id: Option<TopicId>) -> Self {
        Self {
            version: MANIFEST_VERSION,
            topic: topic.to_string(),
            partition,
            topic_id,
            next_offset: 0,
            landed_records: 0,
            landed_files: 0,
            updated_ms: 0,
        }
    }

    /// Path relative to the output root.
    pub fn path(topic: &str, partition: u32) -> String {
        format!("{topic}/_landed/{partition}.json")
    }

    /// Parses and checks a stored manifest.
    pub fn decode(bytes: &[u8], topic: &str, partition: u32) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} (this build reads {MANIFEST_VERSION})",
                manifest.version
            ));
        }
        if manifest.topic != topic || manifest.partition != partition || manifest.next_offset < 0 {
            return Err(format!(
                "manifest is for {}-{} at {}",
                manifest.topic, manifest.partition, manifest.next_offset
            ));
        }
        Ok(manifest)
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = r#"{"version":1,"topic":"payments","partition":3,"next_offset":120000,"landed_records":119998,"landed_files":12,"updated_ms":1764000000000}"#;

    #[test]
    fn given_the_documented_vector_when_decoded_and_encoded_then_bytes_round_trip() {
        let manifest = Manifest::decode(VECTOR.as_bytes(), "payments", 3).unwrap();
        assert_eq!(manifest.next_offset, 120_000);
        assert_eq!(manifest.encode(), VECTOR.as_bytes());
    }

    #[test]
    fn given_another_version_or_partition_when_decoded_then_refused() {
        let v2 = VECTOR.replace("\"version\":1", "\"version\":2");
        assert!(Manifest::decode(v2.as_bytes(), "payments", 3).unwrap_err().contains("version 2"));
        assert!(Manifest::decode(VECTOR.as_bytes(), "payments", 4).is_err());
        assert!(Manifest::decode(b"{", "payments", 3).is_err());
    }

    #[test]
    fn given_a_topic_id_when_encoded_then_it_is_kept_and_a_bad_one_is_refused() {
        let id: TopicId = "6f1c2a9e-53b4-4d0e-9a57-2f8c3e1d0b44".parse().unwrap();
        let mut manifest = Manifest::empty("payments", 3, Some(id));
        manifest.next_offset = 7;
        let bytes = manifest.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(
                r#""partition":3,"topic_id":"6f1c2a9e-53b4-4d0e-9a57-2f8c3e1d0b44","next_offset":7"#
            ),
            "{text}"
        );
        assert_eq!(Manifest::decode(&bytes, "payments", 3).unwrap(), manifest);
        let bad = text.replace("6f1c2a9e", "zzzzzzzz");
        assert!(Manifest::decode(bad.as_bytes(), "payments", 3).is_err());
    }
}
