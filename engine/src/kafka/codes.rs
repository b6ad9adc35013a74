//! Kafka error codes, and the one place an [`EngineError`] becomes one.

use crate::batch::BatchError;
use crate::error::EngineError;
use crate::log::{AppendError, ReadError};
use crate::producers::SequenceError;

/// Kafka error codes corelog answers with.
pub(super) mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

pub(super) fn error_code(error: &EngineError) -> i16 {
    match error {
        EngineError::UnknownPartition(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        EngineError::Append(AppendError::Corrupt(BatchError::UnsupportedCompression(_))) => {
            code::UNSUPPORTED_COMPRESSION_TYPE
        }
        EngineError::Append(AppendError::Corrupt(error)) if error.is_invalid_record() => code::INVALID_RECORD,
        EngineError::Append(AppendError::Corrupt(_) | AppendError::NotOneBatch { .. }) => {
            code::CORRUPT_MESSAGE
        }
        EngineError::Append(AppendError::TooLarge { .. }) => code::MESSAGE_TOO_LARGE,
        EngineError::Append(AppendError::ReadOnly(_) | AppendError::Storage(_)) | EngineError::Storage(_) => {
            code::KAFKA_STORAGE_ERROR
        }
        EngineError::Read(ReadError::OffsetOutOfRange { .. }) => code::OFFSET_OUT_OF_RANGE,
        EngineError::Read(ReadError::Corrupt { .. }) => code::KAFKA_STORAGE_ERROR,
        EngineError::Sequence(SequenceError::OutOfOrderSequence { .. }) => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        EngineError::Sequence(SequenceError::InvalidProducerEpoch { .. }) => code::INVALID_PRODUCER_EPOCH,
        EngineError::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
        EngineError::PartitionLimit { .. } => code::POLICY_VIOLATION,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}
