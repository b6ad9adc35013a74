//! Any Kafka-protocol broker as a [`Source`] (`corelog land --brokers HOST:PORT`), so
//! landing keeps working when the log lives on a Kafka or Redpanda cluster.
//!
//! One librdkafka consumer with manual assignment (no group, nothing committed to the
//! broker): each partition gets its own queue, assigned at the offset the lander asks
//! for, which is its manifest's `next_offset`. The manifest stays the only record of
//! what landed, exactly as with segment files. Records come from the broker up to its
//! high watermark (read_committed), so only replicated data lands. A partition is
//! caught up once the broker reported its end (partition EOF) and nothing newer
//! arrived.
//!
//! Nothing is reset silently (`auto.offset.reset=error`): when the offset asked for is
//! out of the broker's range, the watermarks say why. Below the log start, the offsets
//! were deleted by retention before they landed (reported as skipped, like the segment
//! source does); past the end, the topic was re-created shorter or its log cut back
//! ([`SourceError::LogEndsEarly`]). librdkafka does not expose topic ids, so a topic
//! re-created *longer* than what landed is not told apart over `--brokers` (the
//! segment source tells it by id).

use crate::source::{LandRecord, ReadOutcome, Source, SourceError};
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Time to wait for a broker answer (metadata, watermarks, assignment).
pub const BROKER_TIMEOUT_MS: u64 = 10_000;
/// Longest one read waits for the first record of an idle partition.
pub const POLL_WAIT_MS: u64 = 50;

type Queue = rdkafka::consumer::base_consumer::PartitionQueue<DefaultConsumerContext>;

struct Assigned {
    queue: Queue,
    /// Offset of the next record this queue delivers.
    position: i64,
    /// The broker said the queue reached the end and nothing arrived since.
    at_end: bool,
}

/// Reads partitions from a Kafka-protocol broker.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer>,
    assigned: HashMap<(String, u32), Assigned>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("partitions", &self.assigned.len()).finish_non_exhaustive()
    }
}

fn kafka_error(error: KafkaError) -> SourceError {
    SourceError::Kafka(error.to_string())
}

impl KafkaSource {
    /// Connects to `brokers` (comma-separated `HOST:PORT`) with extra librdkafka
    /// `settings` (TLS and SASL: `security.protocol`, `sasl.*`, `ssl.*`).
    pub fn new(brokers: &str, settings: &[(String, String)]) -> Result<Self, SourceError> {
        let mut config = ClientConfig::new();
        for (key, value) in settings {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", brokers)
            .set("group.id", "corelog-lander")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "error")
            .create()
            .map_err(kafka_error)?;
        // Fail fast on an unreachable broker rather than on the first read.
        consumer.fetch_metadata(None, Duration::from_millis(BROKER_TIMEOUT_MS)).map_err(kafka_error)?;
        Ok(Self { consumer: Arc::new(consumer), assigned: HashMap::new() })
    }

    fn assign(&mut self, topic: &str, partition: u32, from: i64) -> Result<(), SourceError> {
        let key = (topic.to_string(), partition);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition as i32, Offset::Offset(from)).map_err(kafka_error)?;
        if self.assigned.remove(&key).is_some() {
            self.consumer.incremental_unassign(&list).map_err(kafka_error)?;
        }
        let queue = self
            .consumer
            .split_partition_queue(topic, partition as i32)
            .ok_or_else(|| SourceError::Kafka(format!("no queue for {topic}-{partition}")))?;
        self.consumer.incremental_assign(&list).map_err(kafka_error)?;
        self.assigned.insert(key, Assigned { queue, position: from, at_end: false });
        Ok(())
    }
}

impl Source for KafkaSource {
    fn topics(&mut self) -> Result<Vec<(String, u32)>, SourceError> {
        let metadata = self
            .consumer
            .fetch_metadata(None, Duration::from_millis(BROKER_TIMEOUT_MS))
            .map_err(kafka_error)?;
        let mut topics: Vec<(String, u32)> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as u32))
            .collect();
        topics.sort();
        Ok(topics)
    }

    fn read(
        &mut self,
        topic: &str,
        partition: u32,
        from: i64,
        bytes_max: usize,
        out: &mut Vec<LandRecord>,
    ) -> Result<ReadOutcome, SourceError> {
        let key = (topic.to_string(), partition);
        if self.assigned.get(&key).is_none_or(|a| a.position != from) {
            self.assign(topic, partition, from)?;
        }
        // Serve the main queue (errors, callbacks); records arrive on partition queues.
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            if let Err(error) = event {
                tracing::warn!("kafka source: {error}");
            }
        }
        let assigned = self.assigned.get_mut(&key).expect("assigned above");
        let mut bytes = 0usize;
        let mut wait = Duration::from_millis(if assigned.at_end { 0 } else { POLL_WAIT_MS });
        let mut next_offset = from;
        let mut out_of_range = false;
        while bytes < bytes_max {
            match assigned.queue.poll(wait) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    assigned.at_end = true;
                    break;
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    out_of_range = true;
                    break;
                }
                Some(Err(error)) => return Err(kafka_error(error)),
                Some(Ok(message)) => {
                    wait = Duration::ZERO;
                    assigned.at_end = false;
                    if message.offset() < from {
                        continue;
                    }
                    let headers = message.headers().map_or_else(Vec::new, |headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                            .collect()
                    });
                    let key = message.key().map(Bytes::copy_from_slice);
                    let value = message.payload().map(Bytes::copy_from_slice);
                    bytes += key.as_ref().map_or(0, |k| k.len()) + value.as_ref().map_or(0, |v| v.len()) + 32;
                    out.push(LandRecord {
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                        key,
                        value,
                        headers,
                    });
                    next_offset = message.offset() + 1;
                }
            }
        }
        assigned.position = next_offset;
        if out_of_range && next_offset == from {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, partition as i32, Duration::from_millis(BROKER_TIMEOUT_MS))
                .map_err(kafka_error)?;
            if from > high {
                // Assigned again (and asked again) on the next read.
                self.assigned.get_mut(&key).expect("assigned above").position = -1;
                return Err(SourceError::LogEndsEarly {
                    topic: topic.to_string(),
                    partition,
                    end: high,
                    expected: from,
                });
            }
            // Below the start (deleted before it landed), or back in range by now: go on
            // from the start of what exists.
            let next = from.max(low);
            self.assign(topic, partition, next)?;
            let skipped = (next > from).then_some((from, next));
            return Ok(ReadOutcome { next_offset: next, caught_up: false, skipped, topic_id: None });
        }
        Ok(ReadOutcome { next_offset, caught_up: assigned.at_end, skipped: None, topic_id: None })
    }

    fn end_offset(&mut self, topic: &str, partition: u32) -> Result<i64, SourceError> {
        let (_low, high) = self
            .consumer
            .fetch_watermarks(topic, partition as i32, Duration::from_millis(BROKER_TIMEOUT_MS))
            .map_err(kafka_error)?;
        Ok(high)
    }
}
