//! Produce in two phases: batches submitted to their owners in request order (before
//! the connection reads its next request), then the replies awaited.

use super::sasl::Session;
use super::{authz, codes::*, topics::*};
use crate::batch::{self};
use crate::error::EngineError;
use crate::shard::{AckLevel, Answered, Request, Shard};
use crate::types::AppendResult;
use crate::types::TopicPartition;
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use kafka_protocol::messages::{produce_response, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use security::acl::{Operation, ResourceType};
use std::rc::Rc;

/// One partition of a produce request after its batches were submitted.
pub(super) enum PartitionSubmitted {
    /// Refused before submission (unknown partition, malformed records).
    Refused(i16),
    /// Every batch sent to the owner, in order; replies pending.
    Sent(Vec<Answered<AppendResult>>),
}

/// Phase one of a produce: topics ensured, then every batch of every partition sent
/// to its owner, in request order. A connection completes this phase for one request
/// before it reads the next, so pipelined requests append in the order sent.
pub(super) async fn produce_submit(
    shard: &Rc<Shard>,
    session: &Session,
    request: ProduceRequest,
) -> Vec<(TopicName, Vec<(i32, PartitionSubmitted)>)> {
    // acks=all (-1) waits for the flush mode's durability; acks=1 and acks=0 for the write.
    let ack = if request.acks == -1 { AckLevel::Durable } else { AckLevel::Written };
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let known = if shard.query_writing(&name).is_some() {
            // Only the query writes its sinks (one writer, no gap in `seq`).
            Err(code::TOPIC_AUTHORIZATION_FAILED)
        } else if !authz::allowed(shard, session, Operation::Write, ResourceType::Topic, &name) {
            Err(code::TOPIC_AUTHORIZATION_FAILED)
        } else {
            let create = shard.catalog.partition_count(&name).is_none()
                && authz::may_create_topic(shard, session, &name);
            ensure_topic(shard, &name, create).await
        };
        let partitions = topic
            .partition_data
            .into_iter()
            .map(|partition| {
                let index = partition.index;
                let submitted = match known {
                    Err(code) => PartitionSubmitted::Refused(code),
                    Ok(count) if index < 0 || index as u32 >= count => {
                        PartitionSubmitted::Refused(code::UNKNOWN_TOPIC_OR_PARTITION)
                    }
                    Ok(_) => submit_batches(
                        shard,
                        TopicPartition::new(&name, index as u32),
                        partition.records,
                        ack,
                    ),
                };
                (index, submitted)
            })
            .collect();
        topics.push((topic.name, partitions));
    }
    topics
}

/// Splits one partition's records into batches (all framed correctly, or none is
/// sent) and sends each to the owner.
pub(super) fn submit_batches(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    records: Option<Bytes>,
    ack: AckLevel,
) -> PartitionSubmitted {
    let Some(mut rest) = records else { return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE) };
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match batch::frame_len(&rest) {
            Some(Ok(len)) if len <= rest.len() => frames.push(rest.split_to(len)),
            _ => return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE),
        }
    }
    let sent = frames
        .into_iter()
        .map(|frame| {
            let batch = frame.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            shard.start(|answer| Request::Append { tp: tp.clone(), batch, ack, answer })
        })
        .collect();
    PartitionSubmitted::Sent(sent)
}

/// Phase two: waits for every reply and builds the response (first base offset per
/// partition, or the first failure's error code).
pub(super) async fn produce_finish(
    topics: Vec<(TopicName, Vec<(i32, PartitionSubmitted)>)>,
) -> ProduceResponse {
    let mut responses = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let results = join_all(partitions.into_iter().map(|(index, submitted)| async move {
            let (error_code, base_offset) = match submitted {
                PartitionSubmitted::Refused(code) => (code, -1),
                PartitionSubmitted::Sent(replies) => {
                    let mut outcome = (code::NONE, -1);
                    for reply in replies {
                        match reply.await.unwrap_or(Err(EngineError::ShuttingDown)) {
                            Ok(result) if outcome == (code::NONE, -1) => outcome.1 = result.base_offset,
                            Ok(_) => {}
                            Err(error) if outcome.0 == code::NONE => outcome = (error_code(&error), -1),
                            Err(_) => {}
                        }
                    }
                    outcome
                }
            };
            let message = (error_code == code::TOPIC_AUTHORIZATION_FAILED).then(|| {
                StrBytes::from_static_str(
                    "not authorized to write this topic (a stream query's output is written only by its query)",
                )
            });
            produce_response::PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(error_code)
                .with_error_message(message)
                .with_base_offset(base_offset)
                .with_log_append_time_ms(-1)
        }))
        .await;
        responses.push(
            produce_response::TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(results),
        );
    }
    ProduceResponse::default().with_responses(responses)
}
