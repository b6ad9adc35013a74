//! Fetch (bounded like Kafka's broker, long poll) and ListOffsets.

use super::api::{encode, malformed, respond, Answer, Call};
use super::authz;
use super::codes::*;
use super::FETCH_WAIT_MS_MAX;
use crate::error::EngineError;
use crate::shard::{Request, Shard};
use crate::types::TopicPartition;
use bytes::Bytes;
use futures_util::future::{join_all, select_all};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::{
    fetch_response, list_offsets_response, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse,
};
use kafka_protocol::protocol::Decodable;
use security::acl::{Operation, ResourceType};
use std::rc::Rc;

pub(super) struct FetchSlot {
    topic: usize,
    tp: TopicPartition,
    offset: i64,
    max_bytes: usize,
    /// Only the first partition of a Fetch may return a batch above its budget.
    strict: bool,
}

pub(super) async fn read_partition(shard: &Rc<Shard>, slot: &FetchSlot) -> fetch_response::PartitionData {
    let partition = fetch_response::PartitionData::default().with_partition_index(slot.tp.partition as i32);
    if slot.max_bytes == 0 && slot.strict {
        // No budget left for it: only offsets, no read (and no work).
        let partition = match shard.call(|answer| Request::Info(slot.tp.clone(), answer)).await {
            Ok(info) => partition
                .with_high_watermark(info.high_watermark)
                .with_last_stable_offset(info.high_watermark)
                .with_log_start_offset(info.log_start_offset)
                .with_records(Some(Bytes::new())),
            Err(error) => partition.with_error_code(error_code(&error)).with_high_watermark(-1),
        };
        return partition;
    }
    let read = |answer| Request::Read {
        tp: slot.tp.clone(),
        offset: slot.offset,
        max_bytes: slot.max_bytes,
        strict: slot.strict,
        answer,
    };
    match shard.call(read).await {
        Ok(fetched) => partition
            .with_high_watermark(fetched.high_watermark)
            .with_last_stable_offset(fetched.high_watermark)
            .with_log_start_offset(fetched.log_start_offset)
            .with_records(Some(fetched.bytes)),
        Err(error) => {
            let code = error_code(&error);
            let info = shard.call(|answer| Request::Info(slot.tp.clone(), answer)).await.ok();
            partition
                .with_error_code(code)
                .with_high_watermark(info.map_or(-1, |i| i.high_watermark))
                .with_log_start_offset(info.map_or(-1, |i| i.log_start_offset))
        }
    }
}

/// Kafka's `fetch.max.bytes` default: the most record bytes one Fetch response holds
/// (plus at most one batch, when the first partition's first batch is larger).
pub const FETCH_RESPONSE_BYTES_MAX: usize = 55 << 20;

/// Partitions one Fetch may name; later ones are not read.
pub const FETCH_PARTITIONS_MAX: usize = 10_000;

/// Plans the reads of a Fetch the way Kafka's broker does: partitions in request order,
/// each read bounded by its `partition_max_bytes` and by what is left of the request's
/// `max_bytes` (itself capped at [`FETCH_RESPONSE_BYTES_MAX`]); only the first non-empty
/// partition may return a batch above its share (the first one here, the others through
/// [`read_slots`]), so a consumer always progresses. A partition
/// named again in the same request, or beyond [`FETCH_PARTITIONS_MAX`], is answered once
/// and never read twice. Negative partition indexes are answered
/// UNKNOWN_TOPIC_OR_PARTITION.
pub(super) fn plan_fetch(request: &FetchRequest) -> (Vec<FetchSlot>, Vec<(usize, i32)>) {
    let mut slots = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut left = (request.max_bytes.max(0) as usize).min(FETCH_RESPONSE_BYTES_MAX);
    for (topic_index, topic) in request.topics.iter().enumerate() {
        for partition in &topic.partitions {
            if partition.partition < 0 {
                unknown.push((topic_index, partition.partition));
                continue;
            }
            let tp = TopicPartition::new(&topic.topic.0, partition.partition as u32);
            if slots.len() >= FETCH_PARTITIONS_MAX || !seen.insert(tp.clone()) {
                continue;
            }
            let max_bytes = (partition.partition_max_bytes.max(0) as usize).min(left);
            left -= max_bytes;
            let strict = !slots.is_empty();
            slots.push(FetchSlot {
                topic: topic_index,
                tp,
                offset: partition.fetch_offset,
                max_bytes,
                strict,
            });
        }
    }
    (slots, unknown)
}

/// Reads every slot at once. When nothing came back but some partition has a batch
/// larger than its share, that partition (the first such) is read again allowed to
/// exceed it: Kafka lets the first *non-empty* partition of a Fetch exceed its limits,
/// so a consumer whose first-listed partitions are caught up still progresses.
pub(super) async fn read_slots(shard: &Rc<Shard>, slots: &[FetchSlot]) -> Vec<fetch_response::PartitionData> {
    let mut partitions = join_all(slots.iter().map(|slot| read_partition(shard, slot))).await;
    let empty = |p: &fetch_response::PartitionData| p.records.as_ref().is_none_or(Bytes::is_empty);
    if partitions.iter().all(empty) {
        let oversized = slots.iter().zip(&partitions).position(|(slot, p)| {
            slot.strict && p.error_code == code::NONE && p.high_watermark > slot.offset && empty(p)
        });
        if let Some(at) = oversized {
            let slot = &slots[at];
            let retry = FetchSlot {
                topic: slot.topic,
                tp: slot.tp.clone(),
                offset: slot.offset,
                max_bytes: slot.max_bytes,
                strict: false,
            };
            partitions[at] = read_partition(shard, &retry).await;
        }
    }
    partitions
}

pub(super) async fn fetch(shard: &Rc<Shard>, request: FetchRequest) -> FetchResponse {
    let (slots, unknown) = plan_fetch(&request);
    let mut partitions = read_slots(shard, &slots).await;
    let bytes: usize = partitions.iter().map(|p| p.records.as_ref().map_or(0, Bytes::len)).sum();
    let wait_ms = (request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX);
    if bytes < request.min_bytes.max(1) as usize && wait_ms > 0 && !slots.is_empty() {
        let waits = slots.iter().map(|slot| {
            Box::pin(shard.call(|answer| Request::WaitFor {
                tp: slot.tp.clone(),
                offset: slot.offset,
                timeout_ms: wait_ms,
                answer,
            }))
        });
        let _ = select_all(waits).await;
        partitions = read_slots(shard, &slots).await;
    }
    let mut responses: Vec<fetch_response::FetchableTopicResponse> = request
        .topics
        .iter()
        .map(|t| fetch_response::FetchableTopicResponse::default().with_topic(t.topic.clone()))
        .collect();
    for (slot, partition) in slots.iter().zip(partitions) {
        responses[slot.topic].partitions.push(partition);
    }
    for (topic, index) in unknown {
        responses[topic].partitions.push(
            fetch_response::PartitionData::default()
                .with_partition_index(index)
                .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                .with_high_watermark(-1),
        );
    }
    FetchResponse::default().with_responses(responses)
}

pub(super) async fn list_offsets(shard: &Rc<Shard>, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let response = list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index);
            if partition.partition_index < 0 {
                partitions.push(
                    response
                        .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_timestamp(-1)
                        .with_offset(-1),
                );
                continue;
            }
            let tp = TopicPartition::new(&topic.name.0, partition.partition_index as u32);
            let answer = match partition.timestamp {
                // -3: the offset of the record with the largest timestamp (KIP-734).
                -3 => max_timestamp_offset(shard, tp).await,
                -1 | -2 => shard.call(|answer| Request::Info(tp, answer)).await.map(|info| {
                    let offset =
                        if partition.timestamp == -1 { info.high_watermark } else { info.log_start_offset };
                    (-1, offset)
                }),
                timestamp => shard
                    .call(|answer| Request::OffsetForTimestamp { tp, timestamp, answer })
                    .await
                    .map(|found| found.map_or((-1, -1), |(offset, timestamp)| (timestamp, offset))),
            };
            partitions.push(match answer {
                Ok((timestamp, offset)) => response.with_timestamp(timestamp).with_offset(offset),
                Err(error) => response.with_error_code(error_code(&error)).with_timestamp(-1).with_offset(-1),
            });
        }
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// ListOffsets with timestamp -3: (largest timestamp, offset of its record), or (-1, -1)
/// for an empty partition. Found by a scan of the partition's batch headers, then of
/// the records of the batch that holds it.
pub(super) async fn max_timestamp_offset(
    shard: &Rc<Shard>,
    tp: TopicPartition,
) -> Result<(i64, i64), EngineError> {
    let found = shard.call(|answer| Request::MaxTimestamp(tp, answer)).await?;
    Ok(found.map_or((-1, -1), |(offset, timestamp)| (timestamp, offset)))
}

/// Fetch. The records are still zero-copy slices of the log: they are counted against
/// the budgets before encoding copies them, and until the frame is written.
pub(super) async fn serve_fetch(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let mut request = FetchRequest::decode(body, version).map_err(malformed(ApiKey::Fetch, version))?;
    let (topics, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics).into_iter().partition(|t| {
        authz::allowed(call.shard, call.session, Operation::Read, ResourceType::Topic, &t.topic.0)
    });
    request.topics = topics;
    let mut response = fetch(call.shard, request).await;
    for topic in denied {
        let partitions = topic.partitions.iter().map(|p| {
            fetch_response::PartitionData::default()
                .with_partition_index(p.partition)
                .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                .with_high_watermark(-1)
        });
        response.responses.push(
            fetch_response::FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_partitions(partitions.collect()),
        );
    }
    if version < 5 {
        for partition in response.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            partition.log_start_offset = -1;
        }
    }
    let partitions = response.responses.iter().flat_map(|t| t.partitions.iter());
    let estimate: usize = partitions.map(|p| p.records.as_ref().map_or(0, Bytes::len) + 64).sum();
    let held = call.budget.take(estimate + 1024).await;
    Ok(Some((version, encode(&response, version)?, held)))
}

/// ListOffsets.
pub(super) async fn serve_list_offsets(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let mut request =
        ListOffsetsRequest::decode(body, version).map_err(malformed(ApiKey::ListOffsets, version))?;
    let (topics, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics).into_iter().partition(|t| {
        authz::allowed(call.shard, call.session, Operation::Describe, ResourceType::Topic, &t.name.0)
    });
    request.topics = topics;
    let mut response = list_offsets(call.shard, request).await;
    for topic in denied {
        let partitions = topic.partitions.iter().map(|p| {
            list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                .with_timestamp(-1)
                .with_offset(-1)
        });
        response.topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions.collect()),
        );
    }
    respond(&response, version)
}
