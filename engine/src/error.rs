//! The engine's error type: what the embedded API, the shards and the protocols above
//! them answer when a request cannot be served. Kafka error codes for each are mapped in
//! one place, the Kafka layer.

use crate::io::ProbeError;
use crate::log::{AppendError, ReadError};
use crate::producers::SequenceError;
use crate::types::TopicPartition;
use std::path::PathBuf;

/// Errors of the embedded API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The kernel cannot run the engine.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// No such topic-partition.
    #[error("unknown topic-partition {0}")]
    UnknownPartition(TopicPartition),
    /// The topic exists already.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The topic name or partition count is invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// The append was refused; nothing was written.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The read was refused.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A disk operation failed; the partition is read-only until restart.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data directory or its metadata is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An idempotent producer's batch breaks its sequence (a gap, or an old epoch).
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// A stream query cannot run as declared.
    #[error("query {query}: {reason}")]
    Query {
        /// The query.
        query: String,
        /// What is wrong.
        reason: String,
    },
    /// A shard could not listen for Kafka connections.
    #[error("cannot listen on {0}")]
    Listen(String),

    /// The listeners' security setup was refused (TLS material, insecure listeners,
    /// an unreadable users or ACL file).
    #[error("security: {0}")]
    Security(String),

    /// The principal may not do this (an ACL denies it or none allows it).
    #[error("not authorized")]
    Unauthorized,
    /// The engine is shutting down or a shard stopped.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A query's sink holds records the query did not write.
    #[error("untrusted query sink: {0}")]
    UntrustedSink(String),
    /// Creating the topic would pass the broker's partition limit.
    #[error("the broker holds {held} partitions; {asked} more would pass its limit of {limit}")]
    PartitionLimit {
        /// Partitions held now.
        held: u64,
        /// Partitions asked for.
        asked: u32,
        /// The limit.
        limit: u32,
    },
}
