//! Security administration over the wire, as an unmodified Kafka admin client does it:
//! CreateAcls, DescribeAcls, DeleteAcls, AlterUserScramCredentials and
//! DescribeUserScramCredentials.
//!
//! Changes go to the data directory's store durably before they are answered (see
//! `security::store`). ACLs can be managed on any broker, also one with only plaintext
//! listeners (they apply once an authenticating listener exists). Credentials arrive
//! salted (the client runs PBKDF2): only StoredKey and ServerKey are kept.

use super::api::{malformed, respond, Answer, Call};
use super::authz;
use super::codes::code;
use bytes::Bytes;
use kafka_protocol::messages::{
    alter_user_scram_credentials_response, describe_user_scram_credentials_response,
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::messages::{
    create_acls_response, delete_acls_response, describe_acls_response, ApiKey, CreateAclsRequest,
    CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use security::acl::{AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType};
use security::scram::{Credential, Mechanism};
use security::store::StoreError;

fn text(value: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(value.into()))
}

/// A binding from CreateAcls' fields, or why not.
fn binding(
    resource_type: i8,
    name: &str,
    pattern: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> Result<AclBinding, String> {
    let binding = AclBinding {
        resource_type: ResourceType::from_code(resource_type).ok_or("unknown resource type")?,
        name: name.to_string(),
        pattern: PatternType::from_code(pattern).ok_or("unknown pattern type")?,
        principal: principal.to_string(),
        host: host.to_string(),
        operation: Operation::from_code(operation).ok_or("unknown operation")?,
        permission: Permission::from_code(permission).ok_or("unknown permission")?,
    };
    binding.validate().map_err(|e| e.to_string())?;
    Ok(binding)
}

/// A filter from DescribeAcls'/DeleteAcls' fields, or why not.
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter::new(
        ResourceType::from_code(resource_type).ok_or("unknown resource type filter")?,
        name.map(|n| n.to_string()),
        PatternType::from_code(pattern).ok_or("unknown pattern type filter")?,
        principal.map(|p| p.to_string()),
        host.map(|h| h.to_string()),
        Operation::from_code(operation).ok_or("unknown operation filter")?,
        Permission::from_code(permission).ok_or("unknown permission filter")?,
    ))
}

/// CreateAcls: cluster Alter; each binding is validated, then all are stored at once.
pub(super) async fn serve_create_acls(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = CreateAclsRequest::decode(body, version).map_err(malformed(ApiKey::CreateAcls, version))?;
    let result = |error_code: i16, message: Option<String>| {
        create_acls_response::AclCreationResult::default()
            .with_error_code(error_code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    if !authz::cluster(call.shard, call.session, Operation::Alter) {
        let results =
            request.creations.iter().map(|_| result(code::CLUSTER_AUTHORIZATION_FAILED, None)).collect();
        return respond(&CreateAclsResponse::default().with_results(results), version);
    }
    let parsed: Vec<Result<AclBinding, String>> = request
        .creations
        .iter()
        .map(|c| {
            binding(
                c.resource_type,
                &c.resource_name,
                c.resource_pattern_type,
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|b| b.as_ref().ok().cloned()).collect();
    let stored = call.shard.catalog.security.update_acls(|acls| {
        valid.into_iter().try_for_each(|b| acls.add(b)).map_err(|e| StoreError::Invalid(e.to_string()))
    });
    let results = parsed
        .into_iter()
        .map(|parsed| match (parsed, &stored) {
            (Err(reason), _) => result(code::INVALID_REQUEST, Some(reason)),
            (Ok(_), Err(error)) => result(code::UNKNOWN_SERVER_ERROR, Some(error.to_string())),
            (Ok(binding), Ok(())) => {
                tracing::info!(principal = %call.session.principal, "ACL added: {binding}");
                result(code::NONE, None)
            }
        })
        .collect();
    respond(&CreateAclsResponse::default().with_results(results), version)
}

/// DescribeAcls: cluster Describe; the matching bindings grouped by resource pattern.
pub(super) async fn serve_describe_acls(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let r = DescribeAclsRequest::decode(body, version).map_err(malformed(ApiKey::DescribeAcls, version))?;
    if !authz::cluster(call.shard, call.session, Operation::Describe) {
        let response = DescribeAclsResponse::default().with_error_code(code::CLUSTER_AUTHORIZATION_FAILED);
        return respond(&response, version);
    }
    let filter = match filter(
        r.resource_type_filter,
        r.resource_name_filter.as_ref(),
        r.pattern_type_filter,
        r.principal_filter.as_ref(),
        r.host_filter.as_ref(),
        r.operation,
        r.permission_type,
    ) {
        Ok(filter) => filter,
        Err(reason) => {
            let response = DescribeAclsResponse::default()
                .with_error_code(code::INVALID_REQUEST)
                .with_error_message(text(reason));
            return respond(&response, version);
        }
    };
    let acls = call.shard.catalog.security.acls(crate::types::now_ms());
    let mut resources: Vec<describe_acls_response::DescribeAclsResource> = Vec::new();
    for b in acls.describe(&filter) {
        let description = describe_acls_response::AclDescription::default()
            .with_principal(StrBytes::from_string(b.principal.clone()))
            .with_host(StrBytes::from_string(b.host.clone()))
            .with_operation(b.operation.code())
            .with_permission_type(b.permission.code());
        let same = |r: &describe_acls_response::DescribeAclsResource| {
            r.resource_type == b.resource_type.code()
                && r.pattern_type == b.pattern.code()
                && *r.resource_name == *b.name
        };
        match resources.iter_mut().find(|r| same(r)) {
            Some(resource) => resource.acls.push(description),
            None => resources.push(
                describe_acls_response::DescribeAclsResource::default()
                    .with_resource_type(b.resource_type.code())
                    .with_resource_name(StrBytes::from_string(b.name.clone()))
                    .with_pattern_type(b.pattern.code())
                    .with_acls(vec![description]),
            ),
        }
    }
    respond(&DescribeAclsResponse::default().with_resources(resources), version)
}

/// DeleteAcls: cluster Alter; every filter's matches removed in one durable update.
pub(super) async fn serve_delete_acls(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = DeleteAclsRequest::decode(body, version).map_err(malformed(ApiKey::DeleteAcls, version))?;
    let failed = |error_code: i16, message: Option<String>| {
        delete_acls_response::DeleteAclsFilterResult::default()
            .with_error_code(error_code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    if !authz::cluster(call.shard, call.session, Operation::Alter) {
        let results =
            request.filters.iter().map(|_| failed(code::CLUSTER_AUTHORIZATION_FAILED, None)).collect();
        return respond(&DeleteAclsResponse::default().with_filter_results(results), version);
    }
    let filters: Vec<Result<AclFilter, String>> = request
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let removed = call.shard.catalog.security.update_acls(|acls| {
        Ok(filters.iter().map(|f| f.as_ref().map(|f| acls.remove(f)).unwrap_or_default()).collect::<Vec<_>>())
    });
    let results = match removed {
        Err(error) => {
            filters.iter().map(|_| failed(code::UNKNOWN_SERVER_ERROR, Some(error.to_string()))).collect()
        }
        Ok(removed) => filters
            .into_iter()
            .zip(removed)
            .map(|(filter, removed)| match filter {
                Err(reason) => failed(code::INVALID_REQUEST, Some(reason)),
                Ok(_) => {
                    let matching = removed
                        .into_iter()
                        .map(|b| {
                            tracing::info!(principal = %call.session.principal, "ACL removed: {b}");
                            delete_acls_response::DeleteAclsMatchingAcl::default()
                                .with_resource_type(b.resource_type.code())
                                .with_resource_name(StrBytes::from_string(b.name))
                                .with_pattern_type(b.pattern.code())
                                .with_principal(StrBytes::from_string(b.principal))
                                .with_host(StrBytes::from_string(b.host))
                                .with_operation(b.operation.code())
                                .with_permission_type(b.permission.code())
                        })
                        .collect();
                    failed(code::NONE, None).with_matching_acls(matching)
                }
            })
            .collect(),
    };
    respond(&DeleteAclsResponse::default().with_filter_results(results), version)
}

/// AlterUserScramCredentials: cluster Alter; deletions and upsertions (salted by the
/// client) stored durably in one update.
pub(super) async fn serve_alter_user_scram_credentials(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = AlterUserScramCredentialsRequest::decode(body, version)
        .map_err(malformed(ApiKey::AlterUserScramCredentials, version))?;
    let result = |user: &StrBytes, error_code: i16, message: Option<String>| {
        alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
            .with_user(user.clone())
            .with_error_code(error_code)
            .with_error_message(message.map(StrBytes::from_string))
    };
    let users: Vec<&StrBytes> =
        request.deletions.iter().map(|d| &d.name).chain(request.upsertions.iter().map(|u| &u.name)).collect();
    if !authz::cluster(call.shard, call.session, Operation::Alter) {
        let results = users.iter().map(|u| result(u, code::CLUSTER_AUTHORIZATION_FAILED, None)).collect();
        return respond(&AlterUserScramCredentialsResponse::default().with_results(results), version);
    }
    // Each change is checked first; the valid ones are then written in one update.
    let mut outcomes: Vec<Result<(), (i16, String)>> = Vec::with_capacity(users.len());
    let mut deletions = Vec::new();
    for deletion in &request.deletions {
        match Mechanism::from_kafka_type(deletion.mechanism) {
            Some(m) => {
                deletions.push((deletion.name.to_string(), m));
                outcomes.push(Ok(()));
            }
            None => outcomes.push(Err((code::UNSUPPORTED_SASL_MECHANISM, "unknown SCRAM mechanism".into()))),
        }
    }
    let mut upsertions = Vec::new();
    for upsertion in &request.upsertions {
        let credential = Mechanism::from_kafka_type(upsertion.mechanism)
            .ok_or((code::UNSUPPORTED_SASL_MECHANISM, "unknown SCRAM mechanism".to_string()))
            .and_then(|m| {
                let iterations = u32::try_from(upsertion.iterations).unwrap_or(0);
                Credential::from_salted(m, &upsertion.salt, iterations, &upsertion.salted_password)
                    .map_err(|e| (code::UNACCEPTABLE_CREDENTIAL, e.to_string()))
            })
            .and_then(|c| {
                security::store::check_user_name(&upsertion.name)
                    .map(|()| c)
                    .map_err(|e| (code::UNACCEPTABLE_CREDENTIAL, e.to_string()))
            });
        match credential {
            Ok(credential) => {
                upsertions.push((upsertion.name.to_string(), credential));
                outcomes.push(Ok(()));
            }
            Err(error) => outcomes.push(Err(error)),
        }
    }
    let missing = call.shard.catalog.security.update_users(|store| {
        let missing: Vec<bool> = deletions.iter().map(|(user, m)| !store.remove(user, Some(*m))).collect();
        for (user, credential) in upsertions {
            store.upsert(&user, credential)?;
        }
        Ok(missing)
    });
    let mut missing_deletions = match &missing {
        Ok(missing) => missing.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = users
        .into_iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (user, outcome))| match (outcome, &missing) {
            (Err((code, message)), _) => result(user, code, Some(message)),
            (Ok(()), Err(error)) => result(user, code::UNKNOWN_SERVER_ERROR, Some(error.to_string())),
            (Ok(()), Ok(_)) if i < request.deletions.len() && missing_deletions.next() == Some(true) => {
                result(user, code::RESOURCE_NOT_FOUND, Some("no such credential".into()))
            }
            (Ok(()), Ok(_)) => {
                tracing::info!(principal = %call.session.principal, "SCRAM credentials of {user} changed");
                result(user, code::NONE, None)
            }
        })
        .collect();
    respond(&AlterUserScramCredentialsResponse::default().with_results(results), version)
}

/// DescribeUserScramCredentials: cluster Describe; mechanisms and iterations only.
pub(super) async fn serve_describe_user_scram_credentials(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    let request = DescribeUserScramCredentialsRequest::decode(body, version)
        .map_err(malformed(ApiKey::DescribeUserScramCredentials, version))?;
    if !authz::cluster(call.shard, call.session, Operation::Describe) {
        let response = DescribeUserScramCredentialsResponse::default()
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED);
        return respond(&response, version);
    }
    let users = call.shard.catalog.security.users(crate::types::now_ms());
    let names: Vec<String> = match request.users {
        Some(wanted) if !wanted.is_empty() => wanted.into_iter().map(|u| u.name.to_string()).collect(),
        _ => users.list().map(|(name, _)| name.to_string()).collect(),
    };
    let results = names
        .into_iter()
        .map(|name| {
            let infos: Vec<_> = users
                .credentials(&name)
                .map(|c| {
                    describe_user_scram_credentials_response::CredentialInfo::default()
                        .with_mechanism(c.mechanism.kafka_type())
                        .with_iterations(c.iterations as i32)
                })
                .collect();
            let result =
                describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(name.clone()));
            if infos.is_empty() {
                result
                    .with_error_code(code::RESOURCE_NOT_FOUND)
                    .with_error_message(text(format!("no user {name}")))
            } else {
                result.with_credential_infos(infos)
            }
        })
        .collect();
    respond(&DescribeUserScramCredentialsResponse::default().with_results(results), version)
}
