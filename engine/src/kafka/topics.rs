//! Metadata (with auto-creation) and topic administration: CreateTopics.

use super::api::{malformed, respond, Answer, Call};
use super::authz;
use super::codes::*;
use super::sasl::Session;
use super::NODE_ID;
use crate::error::EngineError;
use crate::shard::{Request, Shard};
use crate::types::TopicPartition;
use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::{
    create_topics_response, metadata_response, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::messages::{
    delete_topics_response, DeleteTopicsRequest, DeleteTopicsResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::protocol::StrBytes;
use security::acl::{Operation, ResourceType};
use std::net::SocketAddr;
use std::rc::Rc;

pub(super) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates `topic` with the auto-create partition count, if allowed; returns its
/// partition count.
pub(super) async fn ensure_topic(shard: &Rc<Shard>, topic: &str, allow_create: bool) -> Result<u32, i16> {
    if let Some(count) = shard.catalog.partition_count(topic) {
        return Ok(count);
    }
    let Some(partitions) = shard.config.auto_create_partitions.filter(|_| allow_create) else {
        return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
    };
    match shard.catalog.add(topic, partitions) {
        Ok(()) | Err(EngineError::TopicExists(_)) => {}
        Err(EngineError::InvalidTopic(_)) => return Err(code::INVALID_TOPIC_EXCEPTION),
        Err(error) => return Err(error_code(&error)),
    }
    let opened = join_all((0..partitions).map(|p| {
        let tp = TopicPartition::new(topic, p);
        shard.call(move |answer| Request::CreatePartition(tp, answer))
    }))
    .await;
    if opened.iter().any(Result::is_err) {
        return Err(code::KAFKA_STORAGE_ERROR);
    }
    Ok(shard.catalog.partition_count(topic).unwrap_or(partitions))
}

pub(super) async fn metadata(
    shard: &Rc<Shard>,
    session: &Session,
    request: MetadataRequest,
    advertised: Option<SocketAddr>,
) -> MetadataResponse {
    let address = advertised.or(shard.config.listeners.first().map(|l| l.address));
    let broker = metadata_response::MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(StrBytes::from_string(address.map_or("127.0.0.1".into(), |a| a.ip().to_string())))
        .with_port(address.map_or(9092, |a| i32::from(a.port())));
    let describe =
        |name: &str| authz::allowed(shard, session, Operation::Describe, ResourceType::Topic, name);
    let names: Vec<String> = match &request.topics {
        // All topics: only those the principal may describe are listed.
        None => shard.catalog.topics().into_keys().filter(|name| describe(name)).collect(),
        Some(topics) => topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let topic = metadata_response::MetadataResponseTopic::default().with_name(Some(topic_name(&name)));
        if request.topics.is_some() && !describe(&name) {
            topics.push(topic.with_error_code(code::TOPIC_AUTHORIZATION_FAILED));
            continue;
        }
        let create = request.allow_auto_topic_creation
            && shard.catalog.partition_count(&name).is_none()
            && authz::may_create_topic(shard, session, &name);
        let topic = match ensure_topic(shard, &name, create).await {
            Ok(count) => topic
                .with_topic_id(shard.catalog.topic_id(&name).map_or_else(Default::default, |id| id.0))
                .with_partitions(
                    (0..count as i32)
                        .map(|p| {
                            metadata_response::MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(NODE_ID))
                                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                                .with_isr_nodes(vec![BrokerId(NODE_ID)])
                        })
                        .collect(),
                ),
            Err(error) => topic.with_error_code(error),
        };
        topics.push(topic);
    }
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("corelog")))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

pub(super) async fn create_topics(
    shard: &Rc<Shard>,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions = match topic.num_partitions {
            -1 => shard.config.auto_create_partitions.unwrap_or(1) as i32,
            n => n,
        };
        let result = create_topics_response::CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(1);
        let outcome = if !authz::may_create_topic(shard, session, &name) {
            Err((code::TOPIC_AUTHORIZATION_FAILED, format!("not authorized to create topic {name}")))
        } else if partitions <= 0 || partitions as u32 > crate::catalog::PARTITIONS_MAX {
            Err((code::INVALID_PARTITIONS, format!("{partitions} partitions")))
        } else if request.validate_only {
            match shard.catalog.partition_count(&name) {
                Some(_) => Err((code::TOPIC_ALREADY_EXISTS, format!("topic {name} already exists"))),
                None => Ok(()),
            }
        } else {
            match shard.catalog.add(&name, partitions as u32) {
                Ok(()) => {
                    let opened = join_all((0..partitions as u32).map(|p| {
                        let tp = TopicPartition::new(&name, p);
                        shard.call(move |answer| Request::CreatePartition(tp, answer))
                    }))
                    .await;
                    match opened.into_iter().find_map(Result::err) {
                        Some(error) => Err((error_code(&error), error.to_string())),
                        None => Ok(()),
                    }
                }
                Err(error @ EngineError::InvalidTopic(_)) => {
                    Err((code::INVALID_TOPIC_EXCEPTION, error.to_string()))
                }
                Err(error) => Err((error_code(&error), error.to_string())),
            }
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((error_code, message)) => {
                result.with_error_code(error_code).with_error_message(Some(StrBytes::from_string(message)))
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Metadata, creating asked-for topics when the request allows it.
pub(super) async fn serve_metadata(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = MetadataRequest::decode(body, version).map_err(malformed(ApiKey::Metadata, version))?;
    let mut response = metadata(call.shard, call.session, request, call.advertised).await;
    if version < 2 {
        response.cluster_id = None;
    }
    respond(&response, version)
}

/// CreateTopics.
pub(super) async fn serve_create_topics(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request =
        CreateTopicsRequest::decode(body, version).map_err(malformed(ApiKey::CreateTopics, version))?;
    let mut response = create_topics(call.shard, call.session, request).await;
    if version < 5 {
        for topic in &mut response.topics {
            topic.num_partitions = -1;
            topic.replication_factor = -1;
        }
    }
    respond(&response, version)
}

/// DeleteTopics: each topic leaves the catalog durably, then its partitions' files go.
pub(super) async fn serve_delete_topics(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let (shard, version) = (call.shard, call.version);
    let request =
        DeleteTopicsRequest::decode(body, version).map_err(malformed(ApiKey::DeleteTopics, version))?;
    let names: Vec<String> = if version >= 6 {
        request.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect()
    } else {
        request.topic_names.iter().map(|n| n.0.to_string()).collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let authorized = authz::allowed(shard, call.session, Operation::Delete, ResourceType::Topic, &name);
        let removed = if authorized { shard.catalog.remove(&name) } else { Err(EngineError::Unauthorized) };
        let error_code = match removed {
            Ok(partitions) => {
                let deleted = join_all((0..partitions).map(|p| {
                    let tp = TopicPartition::new(&name, p);
                    shard.call(move |answer| Request::DeletePartition(tp, answer))
                }))
                .await;
                deleted.iter().find_map(|r| r.as_ref().err()).map_or(code::NONE, error_code)
            }
            Err(error) => error_code(&error),
        };
        responses.push(
            delete_topics_response::DeletableTopicResult::default()
                .with_name(Some(topic_name(&name)))
                .with_error_code(error_code),
        );
    }
    respond(&DeleteTopicsResponse::default().with_responses(responses), version)
}

/// InitProducerId: a fresh producer id for idempotence (no transactions: there is no
/// transaction coordinator).
pub(super) async fn serve_init_producer_id(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request =
        InitProducerIdRequest::decode(body, version).map_err(malformed(ApiKey::InitProducerId, version))?;
    let response = if request.transactional_id.is_some() {
        InitProducerIdResponse::default().with_error_code(code::COORDINATOR_NOT_AVAILABLE)
    } else if !authz::may_write_idempotently(call.shard, call.session) {
        InitProducerIdResponse::default().with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
    } else {
        InitProducerIdResponse::default()
            .with_producer_id(ProducerId(call.shard.catalog.allocate_producer_id()))
            .with_producer_epoch(0)
    };
    respond(&response, version)
}
