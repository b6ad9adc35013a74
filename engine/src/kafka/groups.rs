//! Consumer groups and committed offsets over the wire: FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch.

use super::api::{malformed, respond, Answer, Call};
use super::authz;
use super::NODE_ID;
use super::{codes::*, topics::*};
use crate::shard::{Request, Shard};
use crate::types::TopicPartition;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::{
    find_coordinator_response, join_group_response, offset_commit_response, offset_fetch_response, BrokerId,
    FindCoordinatorRequest, FindCoordinatorResponse, JoinGroupRequest, JoinGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::messages::{
    leave_group_response, HeartbeatRequest, HeartbeatResponse, LeaveGroupRequest, LeaveGroupResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::protocol::StrBytes;
use security::acl::{Operation, ResourceType};
use std::net::SocketAddr;
use std::rc::Rc;

pub(super) fn find_coordinator(
    shard: &Rc<Shard>,
    request: FindCoordinatorRequest,
    version: i16,
    advertised: Option<SocketAddr>,
) -> FindCoordinatorResponse {
    let address = advertised.or(shard.config.listeners.first().map(|l| l.address));
    let host = StrBytes::from_string(address.map_or("127.0.0.1".into(), |a| a.ip().to_string()));
    let port = address.map_or(9092, |a| i32::from(a.port()));
    let coordinators = request
        .coordinator_keys
        .iter()
        .map(|key| {
            find_coordinator_response::Coordinator::default()
                .with_key(key.clone())
                .with_node_id(BrokerId(NODE_ID))
                .with_host(host.clone())
                .with_port(port)
        })
        .collect();
    if version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        FindCoordinatorResponse::default().with_node_id(BrokerId(NODE_ID)).with_host(host).with_port(port)
    }
}

pub(super) async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let join = crate::groups::JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        client_id: if client_id.is_empty() { "client".into() } else { client_id.to_string() },
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if request.rebalance_timeout_ms > 0 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
    };
    let result = shard.catalog.groups.join(join).await;
    let protocol_name = match (version, result.protocol) {
        (7.., name) => name.map(StrBytes::from_string),
        (_, name) => Some(StrBytes::from_string(name.unwrap_or_default())),
    };
    let protocol_type = if version >= 7 { result.protocol_type.map(StrBytes::from_string) } else { None };
    JoinGroupResponse::default()
        .with_error_code(result.error_code)
        .with_generation_id(result.generation)
        .with_protocol_type(protocol_type)
        .with_protocol_name(protocol_name)
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

/// Publishes `corelog_consumer_group_lag` (high watermark − committed offset) for the
/// partitions a commit names.
pub(super) async fn record_lag(shard: &Rc<Shard>, request: &OffsetCommitRequest) {
    for topic in &request.topics {
        for partition in topic.partitions.iter().filter(|p| p.partition_index >= 0) {
            let tp = TopicPartition::new(&topic.name.0, partition.partition_index as u32);
            if let Ok(info) = shard.call(|answer| Request::Info(tp, answer)).await {
                let lag = (info.high_watermark - partition.committed_offset).max(0);
                metrics::gauge!(
                    "corelog_consumer_group_lag",
                    "group" => request.group_id.0.to_string(),
                    "topic" => topic.name.0.to_string(),
                    "partition" => partition.partition_index.to_string()
                )
                .set(lag as f64);
            }
        }
    }
}

pub(super) fn offset_commit(shard: &Rc<Shard>, request: &OffsetCommitRequest) -> OffsetCommitResponse {
    let exists = |topic: &str, partition: i32| {
        partition >= 0 && shard.catalog.partition_count(topic).is_some_and(|count| (partition as u32) < count)
    };
    let offsets: Vec<(String, i32, i64, Option<String>)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter(|p| exists(&t.name.0, p.partition_index)).map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_metadata.as_ref().map(|m| m.to_string()),
                )
            })
        })
        .collect();
    let error_code = shard.catalog.groups.commit(
        &request.group_id.0,
        request.generation_id_or_member_epoch,
        &request.member_id,
        &offsets,
    );
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if exists(&t.name.0, p.partition_index) {
                        error_code
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub(super) fn offset_fetch(shard: &Rc<Shard>, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    let wanted: Vec<(TopicName, Vec<i32>)> = match request.topics {
        Some(topics) => topics.into_iter().map(|t| (t.name, t.partition_indexes)).collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
            for (topic, partition) in shard.catalog.groups.committed_partitions(&group) {
                by_topic.entry(topic).or_default().push(partition);
            }
            by_topic.into_iter().map(|(t, p)| (topic_name(&t), p)).collect()
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|partition| {
                    let committed = shard.catalog.groups.committed(&group, &name.0, partition);
                    offset_fetch_response::OffsetFetchResponsePartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(committed.as_ref().map_or(-1, |c| c.0))
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(StrBytes::from_string(
                            committed.and_then(|c| c.1).unwrap_or_default(),
                        )))
                })
                .collect();
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// FindCoordinator: this broker, for every group.
pub(super) async fn serve_find_coordinator(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request =
        FindCoordinatorRequest::decode(body, version).map_err(malformed(ApiKey::FindCoordinator, version))?;
    // Groups need Describe on the group (key type 0); transactions (1) are not served.
    let denied = |key: &str| {
        request.key_type == 0
            && !authz::allowed(call.shard, call.session, Operation::Describe, ResourceType::Group, key)
    };
    let denied_keys: Vec<bool> = if version >= 4 {
        request.coordinator_keys.iter().map(|k| denied(k)).collect()
    } else {
        vec![denied(&request.key)]
    };
    let mut response = find_coordinator(call.shard, request, version, call.advertised);
    if version >= 4 {
        for (coordinator, denied) in response.coordinators.iter_mut().zip(denied_keys) {
            if denied {
                coordinator.error_code = code::GROUP_AUTHORIZATION_FAILED;
                coordinator.node_id = BrokerId(-1);
            }
        }
    } else if denied_keys[0] {
        response = FindCoordinatorResponse::default()
            .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
            .with_node_id(BrokerId(-1));
    }
    respond(&response, version)
}

/// JoinGroup: waits for the rebalance to complete.
pub(super) async fn serve_join_group(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = JoinGroupRequest::decode(body, version).map_err(malformed(ApiKey::JoinGroup, version))?;
    if !may_read_group(call, &request.group_id.0) {
        return respond(
            &JoinGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            version,
        );
    }
    respond(&join_group(call.shard, request, version, call.client_id).await, version)
}

/// SyncGroup: the leader publishes the assignment; the others wait for theirs.
pub(super) async fn serve_sync_group(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = SyncGroupRequest::decode(body, version).map_err(malformed(ApiKey::SyncGroup, version))?;
    if !may_read_group(call, &request.group_id.0) {
        return respond(
            &SyncGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            version,
        );
    }
    let assignments =
        request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let (error_code, assignment) = call
        .shard
        .catalog
        .groups
        .sync(&request.group_id.0, request.generation_id, &request.member_id, assignments)
        .await;
    let mut response = SyncGroupResponse::default().with_error_code(error_code).with_assignment(assignment);
    if version >= 5 {
        response =
            response.with_protocol_type(request.protocol_type).with_protocol_name(request.protocol_name);
    }
    respond(&response, version)
}

/// Heartbeat.
pub(super) async fn serve_heartbeat(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = HeartbeatRequest::decode(body, version).map_err(malformed(ApiKey::Heartbeat, version))?;
    if !may_read_group(call, &request.group_id.0) {
        return respond(
            &HeartbeatResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            version,
        );
    }
    let error_code =
        call.shard.catalog.groups.heartbeat(&request.group_id.0, request.generation_id, &request.member_id);
    respond(&HeartbeatResponse::default().with_error_code(error_code), version)
}

/// LeaveGroup (one member before v3, a batch of members since).
pub(super) async fn serve_leave_group(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = LeaveGroupRequest::decode(body, version).map_err(malformed(ApiKey::LeaveGroup, version))?;
    if !may_read_group(call, &request.group_id.0) {
        return respond(
            &LeaveGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            version,
        );
    }
    let ids: Vec<String> = if version >= 3 {
        request.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![request.member_id.to_string()]
    };
    let errors = call.shard.catalog.groups.leave(&request.group_id.0, &ids);
    let members = ids
        .iter()
        .zip(&errors)
        .map(|(id, error)| {
            leave_group_response::MemberResponse::default()
                .with_member_id(StrBytes::from_string(id.clone()))
                .with_error_code(*error)
        })
        .collect();
    let response = if version >= 3 {
        LeaveGroupResponse::default().with_members(members)
    } else {
        LeaveGroupResponse::default().with_error_code(errors[0])
    };
    respond(&response, version)
}

/// OffsetCommit, then the group's lag gauges.
pub(super) async fn serve_offset_commit(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let mut request =
        OffsetCommitRequest::decode(body, version).map_err(malformed(ApiKey::OffsetCommit, version))?;
    // Group Read for the whole request, then topic Read for each topic.
    let group_ok = may_read_group(call, &request.group_id.0);
    let (topics, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics).into_iter().partition(|t| {
        group_ok && authz::allowed(call.shard, call.session, Operation::Read, ResourceType::Topic, &t.name.0)
    });
    request.topics = topics;
    let mut response =
        if group_ok { offset_commit(call.shard, &request) } else { OffsetCommitResponse::default() };
    let refusal = if group_ok { code::TOPIC_AUTHORIZATION_FAILED } else { code::GROUP_AUTHORIZATION_FAILED };
    for topic in denied {
        let partitions = topic.partitions.iter().map(|p| {
            offset_commit_response::OffsetCommitResponsePartition::default()
                .with_partition_index(p.partition_index)
                .with_error_code(refusal)
        });
        response.topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions.collect()),
        );
    }
    record_lag(call.shard, &request).await;
    respond(&response, version)
}

/// OffsetFetch.
pub(super) async fn serve_offset_fetch(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request =
        OffsetFetchRequest::decode(body, version).map_err(malformed(ApiKey::OffsetFetch, version))?;
    if !authz::allowed(
        call.shard,
        call.session,
        Operation::Describe,
        ResourceType::Group,
        &request.group_id.0,
    ) {
        return respond(
            &OffsetFetchResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            version,
        );
    }
    let explicit = request.topics.is_some();
    let mut response = offset_fetch(call.shard, request);
    // Topics the principal may not describe: refused when named, left out when the
    // request asked for all of the group's.
    let describe =
        |t: &str| authz::allowed(call.shard, call.session, Operation::Describe, ResourceType::Topic, t);
    if explicit {
        for topic in response.topics.iter_mut().filter(|t| !describe(&t.name.0)) {
            for partition in &mut topic.partitions {
                partition.committed_offset = -1;
                partition.metadata = None;
                partition.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            }
        }
    } else {
        response.topics.retain(|t| describe(&t.name.0));
    }
    respond(&response, version)
}

/// Whether the caller may Read `group` (joining, syncing, heartbeats, leaving,
/// committing).
fn may_read_group(call: &Call<'_>, group: &str) -> bool {
    authz::allowed(call.shard, call.session, Operation::Read, ResourceType::Group, group)
}
