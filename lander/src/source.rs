//! Where landed records come from: the engine's segment files ([`SegmentSource`](crate::SegmentSource))
//! or any Kafka-protocol broker ([`KafkaSource`](crate::KafkaSource)). Both hand the lander the same
//! [`LandRecord`]s, in offset order per partition.

use bytes::Bytes;
use engine::partition_meta::TopicId;

/// One record to land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandRecord {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its Kafka timestamp (create or log-append time), ms since the epoch.
    pub timestamp_ms: i64,
    /// Key bytes.
    pub key: Option<Bytes>,
    /// Value bytes, exactly as produced.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What one [`Source::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Every offset below this was handed out or has no record to land (control
    /// records, offsets compacted away): the next read starts here.
    pub next_offset: i64,
    /// Whether the read stopped at the end of what is durable now (more needs waiting).
    pub caught_up: bool,
    /// Offsets `from..to` that no longer exist (deleted by retention before landing).
    pub skipped: Option<(i64, i64)>,
    /// The incarnation of the topic the records came from, when the source can tell.
    /// When it differs from what the partition landed before, the topic was deleted and
    /// created again: the read handed out nothing, and the partition starts over at 0
    /// (after [`Source::forget`]).
    pub topic_id: Option<TopicId>,
}

/// Errors from a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("{0}")]
    Segment(#[from] engine::segment::SegmentError),
    /// Reading a directory failed.
    #[error("{path}: {source}")]
    Io {
        /// What.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Stored bytes cannot be decoded.
    #[error("{topic}-{partition} at offset {offset}: {reason}")]
    Corrupt {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Where.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// The log ends before an offset already read or landed: the topic was deleted and
    /// re-created, or the engine cut the log back. Landing it would skip or mix
    /// offsets, so the partition stops (loudly) until an operator moves its manifest
    /// and landed files aside.
    #[error("{topic}-{partition}: the log ends at offset {end}, before {expected} (already landed or read): the topic was re-created or its log cut back; move OUT/{topic}/_landed/{partition}.json and its parts aside to land it again")]
    LogEndsEarly {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Where the log ends.
        end: i64,
        /// The offset the lander stands at.
        expected: i64,
    },
    /// The broker failed.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// A log the lander tails.
pub trait Source {
    /// Every topic with its partition count, as known now.
    fn topics(&mut self) -> Result<Vec<(String, u32)>, SourceError>;

    /// Appends to `out` the records of `topic`/`partition` from offset `from`, in offset
    /// order, stopping after about `bytes_max` bytes or at the end of what is durable.
    fn read(
        &mut self,
        topic: &str,
        partition: u32,
        from: i64,
        bytes_max: usize,
        out: &mut Vec<LandRecord>,
    ) -> Result<ReadOutcome, SourceError>;

    /// The partition's end offset now (for lag reports; may be an estimate).
    fn end_offset(&mut self, topic: &str, partition: u32) -> Result<i64, SourceError>;

    /// Drops whatever the source keeps about the partition (open files, positions), so
    /// the next read starts afresh: after the topic was replaced.
    fn forget(&mut self, _topic: &str, _partition: u32) {}

    /// Batches the reads since the last call passed over because they cannot be
    /// decoded: the lander puts each in quarantine before its manifest moves past it.
    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        Vec::new()
    }
}

/// A stored batch that passes its CRC but cannot be landed (it breaks the record rules
/// or does not decode): kept whole with the reason, never silently skipped.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset the batch claims.
    pub first_offset: i64,
    /// Last offset the batch claims.
    pub last_offset: i64,
    /// The batch's bytes as stored.
    pub bytes: Bytes,
    /// Why it cannot be landed.
    pub reason: String,
}

/// Checks one stored batch with the engine's record rules, then decodes it into `out`
/// ([`decode_batch`]); on failure nothing is added to `out` and the reason is returned.
/// `view` is `batch` already parsed (its CRC checked) by the caller.
pub fn decode_checked(
    topic: &str,
    partition: u32,
    view: &engine::batch::BatchView<'_>,
    batch: Bytes,
    from: i64,
    out: &mut Vec<LandRecord>,
) -> Result<(), String> {
    engine::batch::validate_records(view).map_err(|e| e.to_string())?;
    let before = out.len();
    decode_batch(topic, partition, view.base_offset(), batch, from, out).map_err(|e| {
        out.truncate(before);
        e.to_string()
    })
}

/// Decodes one stored RecordBatch v2 (any codec) at `base_offset` into `out`, keeping
/// records at or past `from` and dropping control records.
pub fn decode_batch(
    topic: &str,
    partition: u32,
    base_offset: i64,
    mut batch: Bytes,
    from: i64,
    out: &mut Vec<LandRecord>,
) -> Result<(), SourceError> {
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut batch).map_err(|error| {
        SourceError::Corrupt {
            topic: topic.to_string(),
            partition,
            offset: base_offset,
            reason: error.to_string(),
        }
    })?;
    for record in set.records {
        if record.control || record.offset < from {
            continue;
        }
        let headers = record
            .headers
            .into_iter()
            .map(|(key, value)| (String::from_utf8_lossy(key.as_bytes()).into_owned(), value))
            .collect();
        out.push(LandRecord {
            offset: record.offset,
            timestamp_ms: record.timestamp,
            key: record.key,
            value: record.value,
            headers,
        });
    }
    Ok(())
}
