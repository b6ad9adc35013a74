//! Produce in two phases: batches submitted to their owners in request order (before
//! the connection reads its next request), then the replies awaited.
//!
//! A request's record sets are handed to the log as writable views of the frame they
//! arrived in, not copies ([`own_records`]): the log patches each batch's header in
//! place, so a batch needs a buffer of its own, and the views are disjoint parts of
//! one allocation that the frame's memory budget already covers until every reply is
//! in. When the frame cannot be taken apart (something still shares it), each batch is
//! copied out as before, and counted (`corelog_kafka_produce_copied_bytes_total`).

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
use std::ops::Range;
use std::rc::Rc;

/// One partition's record sets as [`own_records`] hands them on.
pub(super) enum Records {
    /// A writable view of the request frame: batches are split off it, never copied.
    Owned(BytesMut),
    /// Shared with the rest of the frame: each batch is copied out before it is sent.
    Shared(Bytes),
}

/// Per topic, per partition (its index): a `T`.
pub(super) type PerPartition<T> = Vec<(TopicName, Vec<(i32, T)>)>;

/// What the produce path needs of a decoded request, holding nothing else of its frame.
pub(super) struct ProduceParts {
    pub(super) acks: i16,
    /// Per topic (name in memory of its own), per partition: its record sets.
    pub(super) topics: PerPartition<Option<Records>>,
}

/// Takes a decoded Produce request apart: the names and indexes are kept in memory of
/// their own, everything else of the request is dropped, and then `body` (the request
/// body it was decoded from) is split into one writable view per partition's record
/// sets. That works when every record set lies inside `body`, in order, and nothing
/// else holds a reference to it any more (the caller drops its own handles first);
/// otherwise each partition keeps a shared slice.
pub(super) fn own_records(mut request: ProduceRequest, body: Bytes) -> ProduceParts {
    let (acks, topic_data) = (request.acks, std::mem::take(&mut request.topic_data));
    drop(request); // its transactional id and tagged fields may be slices of `body`
    let base = body.as_ptr() as usize;
    // Where the last record set ended in `body`; `None` once one is not the next range.
    let mut end = Some(0);
    let mut slices = Vec::new(); // every record set, in request order
    let topics: PerPartition<Option<Range<usize>>> = topic_data
        .into_iter()
        .map(|topic| {
            let name = TopicName(StrBytes::from_string(topic.name.0.to_string()));
            let partitions = topic
                .partition_data
                .into_iter()
                .map(|partition| {
                    let range = partition.records.map(|records| {
                        let start = (records.as_ptr() as usize).wrapping_sub(base);
                        let range = start..start.saturating_add(records.len());
                        let next = end.is_some_and(|end| end <= start) && range.end <= body.len();
                        end = next.then_some(range.end);
                        slices.push(records);
                        range
                    });
                    (partition.index, range)
                })
                .collect();
            (name, partitions)
        })
        .collect();
    enum Source {
        Frame(BytesMut),
        SharedFrame(Bytes),
        Slices(std::vec::IntoIter<Bytes>),
    }
    let mut source = if end.is_some() {
        // Every record set is a range of `body`: let go of the slices, then take it apart.
        drop(slices);
        body.try_into_mut().map_or_else(Source::SharedFrame, Source::Frame)
    } else {
        Source::Slices(slices.into_iter())
    };
    let mut cursor = 0;
    let mut records = |range: Range<usize>| match &mut source {
        Source::Frame(view) => {
            let _skipped = view.split_to(range.start - cursor);
            cursor = range.end;
            Records::Owned(view.split_to(range.len()))
        }
        Source::SharedFrame(body) => Records::Shared(body.slice(range)),
        Source::Slices(slices) => Records::Shared(slices.next().expect("one slice per record set")),
    };
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            (name, partitions.into_iter().map(|(index, range)| (index, range.map(&mut records))).collect())
        })
        .collect();
    ProduceParts { acks, topics }
}

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
    request: ProduceParts,
) -> Vec<(TopicName, Vec<(i32, PartitionSubmitted)>)> {
    // acks=all (-1) waits for the flush mode's durability; acks=1 and acks=0 for the write.
    let ack = if request.acks == -1 { AckLevel::Durable } else { AckLevel::Written };
    let mut topics = Vec::with_capacity(request.topics.len());
    for (topic_name, partition_data) in request.topics {
        let name = topic_name.0.to_string();
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
        let partitions = partition_data
            .into_iter()
            .map(|(index, records)| {
                let submitted = match known {
                    Err(code) => PartitionSubmitted::Refused(code),
                    Ok(count) if index < 0 || index as u32 >= count => {
                        PartitionSubmitted::Refused(code::UNKNOWN_TOPIC_OR_PARTITION)
                    }
                    Ok(_) => submit_batches(shard, TopicPartition::new(&name, index as u32), records, ack),
                };
                (index, submitted)
            })
            .collect();
        topics.push((topic_name, partitions));
    }
    topics
}

/// Splits one partition's records into batches (all framed correctly, or none is
/// sent) and sends each to the owner.
pub(super) fn submit_batches(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    records: Option<Records>,
    ack: AckLevel,
) -> PartitionSubmitted {
    let batches = match records {
        None => return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE),
        Some(Records::Owned(rest)) => split_batches(rest),
        Some(Records::Shared(rest)) => split_batches(rest).map(|frames| {
            frames
                .into_iter()
                .map(|frame| {
                    frame.try_into_mut().unwrap_or_else(|shared| {
                        metrics::counter!("corelog_kafka_produce_copied_bytes_total")
                            .increment(shared.len() as u64);
                        BytesMut::from(&shared[..])
                    })
                })
                .collect()
        }),
    };
    let Some(batches) = batches else { return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE) };
    let sent = batches
        .into_iter()
        .map(|batch| shard.start(|answer| Request::Append { tp: tp.clone(), batch, ack, answer }))
        .collect();
    PartitionSubmitted::Sent(sent)
}

/// Splits record sets into their batches (each framed correctly, or `None`).
fn split_batches<B: bytes::Buf + std::ops::Deref<Target = [u8]> + SplitTo>(mut rest: B) -> Option<Vec<B>> {
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match batch::frame_len(&rest) {
            Some(Ok(len)) if len <= rest.len() => frames.push(rest.split_front(len)),
            _ => return None,
        }
    }
    Some(frames)
}

/// `split_to` of both buffer types, for [`split_batches`].
trait SplitTo {
    fn split_front(&mut self, at: usize) -> Self;
}

impl SplitTo for Bytes {
    fn split_front(&mut self, at: usize) -> Self {
        self.split_to(at)
    }
}

impl SplitTo for BytesMut {
    fn split_front(&mut self, at: usize) -> Self {
        self.split_to(at)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, RequestHeader, TransactionalId};
    use kafka_protocol::protocol::{Decodable, Encodable};

    /// Two batches of `records` records each, as one partition's record sets.
    fn record_sets(tag: u8, records: usize) -> Bytes {
        let mut sets = BytesMut::new();
        for batch in 0..2u8 {
            let mut builder = BatchBuilder::default();
            for n in 0..records {
                builder.push(1_700_000_000_000, Some(&[tag, batch]), Some(&vec![tag ^ batch; 64 + n]));
            }
            sets.extend_from_slice(&builder.finish());
        }
        sets.freeze()
    }

    /// A Produce request of two topics of two partitions each, encoded the way a client
    /// sends it (header and body, no size prefix), and each partition's record sets.
    fn frame(version: i16) -> (BytesMut, Vec<Bytes>) {
        let sets: Vec<Bytes> = (0..4).map(|n| record_sets(n as u8, 3 + n)).collect();
        let topics = ["payments", "refunds"]
            .iter()
            .enumerate()
            .map(|(t, name)| {
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str(name)))
                    .with_partition_data(
                        (0..2)
                            .map(|p| {
                                PartitionProduceData::default()
                                    .with_index(p as i32)
                                    .with_records(Some(sets[t * 2 + p].clone()))
                            })
                            .collect(),
                    )
            })
            .collect();
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_topic_data(topics);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut bytes = BytesMut::new();
        header.encode(&mut bytes, ApiKey::Produce.request_header_version(version)).unwrap();
        request.encode(&mut bytes, version).unwrap();
        (bytes, sets)
    }

    /// Decodes `frame` the way `net::read_requests` does and takes it apart; `hold`
    /// keeps one more reference to the frame meanwhile.
    fn taken_apart(frame: BytesMut, hold: bool) -> (ProduceParts, Option<Bytes>) {
        let mut frame = frame.freeze();
        let held = hold.then(|| frame.clone());
        let (_, version, header) = super::super::api::decode_header(&mut frame).unwrap();
        let body = frame.clone();
        let request = ProduceRequest::decode(&mut frame, version).unwrap();
        drop((frame, header));
        (own_records(request, body), held)
    }

    fn names_and_indexes(parts: &ProduceParts) -> Vec<(String, i32)> {
        parts.topics.iter().flat_map(|(n, ps)| ps.iter().map(move |(i, _)| (n.0.to_string(), *i))).collect()
    }

    #[test]
    fn a_produce_frame_is_split_into_writable_views_of_itself_not_copied() {
        for version in [3, 7, 9] {
            let (bytes, sets) = frame(version);
            let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
            let (parts, _) = taken_apart(bytes, false);
            assert_eq!(parts.acks, -1);
            let expected: Vec<(String, i32)> =
                [("payments", 0), ("payments", 1), ("refunds", 0), ("refunds", 1)]
                    .map(|(n, i)| (n.into(), i))
                    .into();
            assert_eq!(names_and_indexes(&parts), expected, "v{version}");
            let mut n = 0;
            for (_, partitions) in parts.topics {
                for (_, records) in partitions {
                    let Some(Records::Owned(view)) = records else {
                        panic!("v{version}: partition {n} not owned")
                    };
                    assert_eq!(&view[..], &sets[n][..], "v{version}: partition {n}'s bytes");
                    let at = view.as_ptr() as usize;
                    assert!(at >= start && at + view.len() <= end, "v{version}: partition {n} was copied");
                    // Its batches are split off the same memory, each writable on its own.
                    let batches = split_batches(view).expect("well framed");
                    assert_eq!(batches.len(), 2);
                    assert_eq!(batches[0].as_ptr() as usize, at);
                    assert_eq!(batches[1].as_ptr() as usize, at + batches[0].len());
                    n += 1;
                }
            }
            assert_eq!(n, 4);
        }
    }

    #[test]
    fn a_batch_whose_length_lies_under_a_valid_crc_refuses_its_partition_and_no_other() {
        // The first batch of the first partition claims to run past its record sets
        // (the length field is outside the CRC, which stays valid).
        let (mut bytes, sets) = frame(9);
        let at =
            bytes.windows(sets[0].len()).position(|w| w == &sets[0][..]).expect("record sets in the frame");
        let claimed = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) + sets[0].len() as i32;
        bytes[at + 8..at + 12].copy_from_slice(&claimed.to_be_bytes());
        let (parts, _) = taken_apart(bytes, false);
        let mut views =
            parts.topics.into_iter().flat_map(|(_, partitions)| partitions).map(|(_, records)| {
                let Some(Records::Owned(view)) = records else { panic!("not owned") };
                view
            });
        let lying = views.next().unwrap();
        assert_eq!(lying.len(), sets[0].len(), "the view ends where the request's record sets end");
        assert!(split_batches(lying).is_none(), "the lying batch is refused");
        for (n, view) in views.enumerate() {
            assert_eq!(&view[..], &sets[n + 1][..], "partition {} untouched", n + 1);
            let batches = split_batches(view).expect("well framed");
            assert_eq!(batches.len(), 2);
            for batch in batches {
                crate::batch::BatchView::parse(&batch).expect("a valid batch");
            }
        }
    }

    #[test]
    fn a_frame_still_shared_hands_on_slices_with_the_same_bytes() {
        let (bytes, sets) = frame(9);
        let (parts, held) = taken_apart(bytes, true);
        assert!(held.is_some());
        let mut n = 0;
        for (_, partitions) in parts.topics {
            for (_, records) in partitions {
                let Some(Records::Shared(slice)) = records else {
                    panic!("partition {n} owned while shared")
                };
                assert_eq!(&slice[..], &sets[n][..]);
                n += 1;
            }
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn record_sets_from_outside_the_frame_stay_shared_and_missing_ones_stay_missing() {
        // A request not decoded from `frame`: its record sets are not ranges of it.
        let (bytes, sets) = frame(9);
        let frame = bytes.freeze();
        let request =
            ProduceRequest::default().with_acks(1).with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("payments")))
                .with_partition_data(vec![
                    PartitionProduceData::default().with_index(0).with_records(Some(sets[0].clone())),
                    PartitionProduceData::default().with_index(1).with_records(None),
                ])]);
        let parts = own_records(request, frame);
        let partitions = &parts.topics[0].1;
        assert!(matches!(&partitions[0].1, Some(Records::Shared(s)) if s[..] == sets[0][..]));
        assert!(partitions[1].1.is_none());
    }
}
