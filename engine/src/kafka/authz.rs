//! Which ACL each Kafka API checks, as Kafka's broker does, and the denial's metric.
//!
//! The table (resource: operation):
//! - Produce: topic Write (and, to auto-create, cluster or topic Create);
//! - Fetch: topic Read; ListOffsets: topic Describe;
//! - Metadata: topic Describe (all-topics requests list only the described ones;
//!   auto-creation needs Create);
//! - CreateTopics: cluster or topic Create; DeleteTopics: topic Delete;
//! - InitProducerId: cluster IdempotentWrite or Write on some topic;
//! - FindCoordinator: group Describe; JoinGroup, SyncGroup, Heartbeat, LeaveGroup:
//!   group Read; OffsetCommit: group Read and topic Read; OffsetFetch: group Describe
//!   and topic Describe;
//! - DescribeAcls, DescribeUserScramCredentials: cluster Describe; CreateAcls,
//!   DeleteAcls, AlterUserScramCredentials: cluster Alter.
//!
//! Owns nothing but that table's checks; the rule (ACLs, Deny over Allow, super users,
//! query sinks, whether anything is enforced) is `security::Security::authorize`.

use super::sasl::Session;
use crate::shard::Shard;
use crate::types::now_ms;
use security::acl::{Operation, ResourceType, CLUSTER_NAME};

/// Whether the session may do `operation` on resource `name` of `kind`; a denial is
/// counted (and logged at debug level).
pub(super) fn allowed(
    shard: &Shard,
    session: &Session,
    operation: Operation,
    kind: ResourceType,
    name: &str,
) -> bool {
    let security = &shard.catalog.security;
    if !security.enforced() {
        return true;
    }
    let ok = security.authorize(&session.principal, session.peer.ip(), operation, kind, name, now_ms());
    if !ok {
        deny(session, operation, kind, name);
    }
    ok
}

/// Whether the session may do `operation` on the cluster.
pub(super) fn cluster(shard: &Shard, session: &Session, operation: Operation) -> bool {
    allowed(shard, session, operation, ResourceType::Cluster, CLUSTER_NAME)
}

/// Whether the session may create topic `name` (cluster Create, or topic Create).
/// The cluster check is quiet: only the final refusal counts as a denial.
pub(super) fn may_create_topic(shard: &Shard, session: &Session, name: &str) -> bool {
    let security = &shard.catalog.security;
    let now = now_ms();
    let ip = session.peer.ip();
    !security.enforced()
        || security.authorize(
            &session.principal,
            ip,
            Operation::Create,
            ResourceType::Cluster,
            CLUSTER_NAME,
            now,
        )
        || allowed(shard, session, Operation::Create, ResourceType::Topic, name)
}

/// Whether the session may write idempotently: cluster IdempotentWrite, or Write on
/// some topic (Kafka 3's rule).
pub(super) fn may_write_idempotently(shard: &Shard, session: &Session) -> bool {
    let security = &shard.catalog.security;
    let now = now_ms();
    let ip = session.peer.ip();
    let ok = !security.enforced()
        || security.authorize(
            &session.principal,
            ip,
            Operation::IdempotentWrite,
            ResourceType::Cluster,
            CLUSTER_NAME,
            now,
        )
        || security.authorize_any_write(&session.principal, ip, now);
    if !ok {
        deny(session, Operation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME);
    }
    ok
}

fn deny(session: &Session, operation: Operation, kind: ResourceType, name: &str) {
    let resource = match kind {
        ResourceType::Topic => "topic",
        ResourceType::Group => "group",
        ResourceType::Cluster => "cluster",
        ResourceType::TransactionalId => "transactional_id",
        ResourceType::Any => "any",
    };
    metrics::counter!("corelog_kafka_authorization_denied_total", "resource" => resource).increment(1);
    tracing::debug!(principal = %session.principal, peer = %session.peer, "denied {operation} on {kind} {name}");
}
