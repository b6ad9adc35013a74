//! Kafka error codes, and the one place an [`EngineError`] becomes one.

use crate::batch::BatchError;
use crate::error::EngineError;
use crate::log::{AppendError, ReadError};
use crate::producers::SequenceError;
use kafka_protocol::ResponseError;

/// Kafka error codes corelog answers with, taken from `kafka-protocol`'s
/// [`ResponseError`] (one source for the numbers; the names stay Kafka's).
pub(super) mod code {
    use kafka_protocol::ResponseError as E;

    pub const NONE: i16 = 0;
    pub const CORRUPT_MESSAGE: i16 = E::CorruptMessage.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = E::UnknownTopicOrPartition.code();
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = E::TopicAuthorizationFailed.code();
    pub const UNSUPPORTED_VERSION: i16 = E::UnsupportedVersion.code();
    pub const INVALID_TOPIC_EXCEPTION: i16 = E::InvalidTopicException.code();
    pub const COORDINATOR_NOT_AVAILABLE: i16 = E::CoordinatorNotAvailable.code();
    pub const INVALID_PARTITIONS: i16 = E::InvalidPartitions.code();
    pub const TOPIC_ALREADY_EXISTS: i16 = E::TopicAlreadyExists.code();
    pub const KAFKA_STORAGE_ERROR: i16 = E::KafkaStorageError.code();
    pub const GROUP_AUTHORIZATION_FAILED: i16 = E::GroupAuthorizationFailed.code();
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = E::ClusterAuthorizationFailed.code();
    pub const INVALID_REQUEST: i16 = E::InvalidRequest.code();
    pub const UNKNOWN_SERVER_ERROR: i16 = E::UnknownServerError.code();
    pub const UNACCEPTABLE_CREDENTIAL: i16 = E::UnacceptableCredential.code();
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = E::UnsupportedSaslMechanism.code();
    pub const RESOURCE_NOT_FOUND: i16 = E::ResourceNotFound.code();
}

/// The Kafka error an [`EngineError`] is answered with: the one mapping.
pub(super) fn response_error(error: &EngineError) -> ResponseError {
    match error {
        EngineError::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition,
        EngineError::Append(AppendError::Corrupt(BatchError::UnsupportedCompression(_))) => {
            ResponseError::UnsupportedCompressionType
        }
        EngineError::Append(AppendError::Corrupt(error)) if error.is_invalid_record() => {
            ResponseError::InvalidRecord
        }
        EngineError::Append(AppendError::Corrupt(_) | AppendError::NotOneBatch { .. }) => {
            ResponseError::CorruptMessage
        }
        EngineError::Append(AppendError::TooLarge { .. }) => ResponseError::MessageTooLarge,
        EngineError::Append(AppendError::ReadOnly(_) | AppendError::Storage(_))
        | EngineError::Storage(_)
        | EngineError::Read(ReadError::Corrupt { .. }) => ResponseError::KafkaStorageError,
        EngineError::Read(ReadError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        EngineError::Sequence(SequenceError::OutOfOrderSequence { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        EngineError::Sequence(SequenceError::InvalidProducerEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch
        }
        EngineError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        EngineError::PartitionLimit { .. } => ResponseError::PolicyViolation,
        EngineError::Unauthorized => ResponseError::TopicAuthorizationFailed,
        _ => ResponseError::UnknownServerError,
    }
}

/// [`response_error`] as the code on the wire.
pub(super) fn error_code(error: &EngineError) -> i16 {
    response_error(error).code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_kafkas_codes() {
        let storage = EngineError::Storage("disk".into());
        let sequence = EngineError::Sequence(SequenceError::OutOfOrderSequence {
            producer_id: 1,
            expected: 2,
            found: 3,
        });
        let too_large = EngineError::Append(AppendError::TooLarge { size: 2, max: 1 });
        let out_of_range = EngineError::Read(ReadError::OffsetOutOfRange {
            offset: 9,
            log_start_offset: 0,
            high_watermark: 1,
        });
        // The numbers Kafka's protocol guide gives these errors.
        assert_eq!(error_code(&storage), 56);
        assert_eq!(error_code(&sequence), 45);
        assert_eq!(error_code(&too_large), 10);
        assert_eq!(error_code(&out_of_range), 1);
        assert_eq!(error_code(&EngineError::ShuttingDown), -1);
        assert_eq!((code::UNKNOWN_TOPIC_OR_PARTITION, code::KAFKA_STORAGE_ERROR), (3, 56));
    }
}
