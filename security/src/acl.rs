//! Kafka's ACL model: bindings of (principal, host, resource pattern, operation,
//! permission), the authorization rule, and the filters of DescribeAcls/DeleteAcls.
//!
//! Owns: [`AclBinding`], [`AclFilter`], [`Acls`] (a set of bindings) and
//! [`Acls::authorizes`], which is Kafka's `AclAuthorizer` rule: a matching Deny wins;
//! otherwise a matching Allow of the operation, of `All`, or of an operation that
//! implies it (Read, Write, Delete and Alter imply Describe; AlterConfigs implies
//! DescribeConfigs) allows; otherwise the request is denied (Kafka's
//! `allow.everyone.if.no.acl.found=false`). Super users are the caller's business.
//!
//! Invariants: every binding in an [`Acls`] passed [`AclBinding::validate`] (a concrete
//! resource type, literal or prefixed pattern, concrete operation and permission, a
//! `User:` principal); at most [`ACLS_MAX`] bindings; no duplicates.
//!
//! Never: reads files or clocks (the store is `store`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Most ACL bindings the broker keeps (each is checked on every request that matches
/// it; a store past this is refused when read).
pub const ACLS_MAX: usize = 100_000;
/// Longest principal, host or resource name in a binding.
pub const ACL_FIELD_BYTES_MAX: usize = 1024;
/// The one cluster resource's name (Kafka's).
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The literal resource name that matches every resource of its type.
pub const WILDCARD: &str = "*";

macro_rules! kafka_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $value:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($variant),* }

        impl $name {
            /// Kafka's wire number of this value.
            pub fn code(self) -> i8 {
                match self { $($name::$variant => $value),* }
            }
            /// The value Kafka numbers `code`.
            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($value => Some($name::$variant),)* _ => None }
            }
            /// The value named `name` (case-insensitive, `_` and `-` ignored).
            pub fn parse(name: &str) -> Option<Self> {
                let wanted: String = name.chars().filter(|c| *c != '_' && *c != '-').collect();
                [$($name::$variant),*].into_iter().find(|v| format!("{v:?}").eq_ignore_ascii_case(&wanted))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{self:?}")
            }
        }
    };
}

kafka_enum! {
    /// What an ACL protects.
    ResourceType { Any = 1, Topic = 2, Group = 3, Cluster = 4, TransactionalId = 5 }
}
kafka_enum! {
    /// How a binding's resource name matches.
    PatternType { Any = 1, Match = 2, Literal = 3, Prefixed = 4 }
}
kafka_enum! {
    /// What a request does to a resource.
    Operation {
        Any = 1, All = 2, Read = 3, Write = 4, Create = 5, Delete = 6, Alter = 7, Describe = 8,
        ClusterAction = 9, DescribeConfigs = 10, AlterConfigs = 11, IdempotentWrite = 12,
    }
}
kafka_enum! {
    /// Whether a binding allows or denies.
    Permission { Any = 1, Deny = 2, Allow = 3 }
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern: PatternType,
    /// `User:NAME` or `User:*`.
    pub principal: String,
    /// A client IP address or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Why a binding or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ACL: {0}")]
pub struct InvalidAcl(pub String);

impl AclBinding {
    /// Checks what Kafka checks before it stores a binding.
    pub fn validate(&self) -> Result<(), InvalidAcl> {
        let bad = |why: &str| Err(InvalidAcl(why.to_string()));
        if self.resource_type == ResourceType::Any {
            return bad("resource type ANY is only a filter");
        }
        if !matches!(self.pattern, PatternType::Literal | PatternType::Prefixed) {
            return bad("pattern type must be LITERAL or PREFIXED");
        }
        if matches!(self.operation, Operation::Any) {
            return bad("operation ANY is only a filter");
        }
        if self.permission == Permission::Any {
            return bad("permission ANY is only a filter");
        }
        if self.name.is_empty() {
            return bad("empty resource name");
        }
        if self.resource_type == ResourceType::Cluster && self.name != CLUSTER_NAME {
            return bad("the cluster resource is named kafka-cluster");
        }
        if !self.principal.starts_with("User:") || self.principal.len() == "User:".len() {
            return bad("principal must be User:NAME or User:*");
        }
        if self.host.is_empty() || (self.host != WILDCARD && self.host.parse::<std::net::IpAddr>().is_err()) {
            return bad("host must be * or an IP address");
        }
        if [&self.name, &self.principal, &self.host].iter().any(|f| f.len() > ACL_FIELD_BYTES_MAX) {
            return bad("field too long");
        }
        Ok(())
    }

    /// Whether this binding's resource pattern covers resource `name` of `kind`.
    fn covers(&self, kind: ResourceType, name: &str) -> bool {
        self.resource_type == kind
            && match self.pattern {
                PatternType::Literal => self.name == name || self.name == WILDCARD,
                PatternType::Prefixed => name.starts_with(&self.name),
                _ => false,
            }
    }
}

impl std::fmt::Display for AclBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}:{}:{} from {}",
            self.principal,
            self.permission,
            self.operation,
            self.resource_type,
            self.pattern,
            self.name,
            self.host
        )
    }
}

/// A DescribeAcls/DeleteAcls filter; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub pattern: Option<PatternType>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// The filter of Kafka's wire fields (`Any` values become `None`).
    pub fn new(
        resource_type: ResourceType,
        name: Option<String>,
        pattern: PatternType,
        principal: Option<String>,
        host: Option<String>,
        operation: Operation,
        permission: Permission,
    ) -> Self {
        Self {
            resource_type: (resource_type != ResourceType::Any).then_some(resource_type),
            name,
            pattern: (pattern != PatternType::Any).then_some(pattern),
            principal,
            host,
            operation: (operation != Operation::Any).then_some(operation),
            permission: (permission != Permission::Any).then_some(permission),
        }
    }

    /// Whether `binding` passes the filter. A `Match` pattern matches the literal
    /// bindings of the name or of `*` and the prefixed bindings whose prefix the name
    /// starts with (Kafka's semantics).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let resource = match (self.pattern, &self.name) {
            (Some(PatternType::Match), Some(name)) => {
                self.resource_type.is_none_or(|t| t == binding.resource_type)
                    && binding.covers(binding.resource_type, name)
            }
            (Some(PatternType::Match), None) => true,
            (pattern, name) => pattern.is_none_or(|p| p == binding.pattern) && eq(name, &binding.name),
        };
        resource
            && self.resource_type.is_none_or(|t| t == binding.resource_type)
            && eq(&self.principal, &binding.principal)
            && eq(&self.host, &binding.host)
            && self.operation.is_none_or(|o| o == binding.operation)
            && self.permission.is_none_or(|p| p == binding.permission)
    }
}

/// A set of ACL bindings, indexed by resource type and name for [`Acls::authorizes`]
/// (a check looks up the name, `*` and each prefix of the name: never a scan of all
/// bindings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredAcls", into = "StoredAcls")]
pub struct Acls {
    bindings: std::collections::BTreeSet<AclBinding>,
    by_name: HashMap<ResourceType, HashMap<String, Vec<AclBinding>>>,
}

/// What [`Acls`] is stored as: the bindings only (the index is rebuilt on reading).
#[derive(Serialize, Deserialize)]
struct StoredAcls {
    bindings: std::collections::BTreeSet<AclBinding>,
}

impl From<StoredAcls> for Acls {
    fn from(stored: StoredAcls) -> Self {
        let mut acls = Acls { bindings: stored.bindings, by_name: HashMap::new() };
        acls.reindex();
        acls
    }
}

impl From<Acls> for StoredAcls {
    fn from(acls: Acls) -> Self {
        StoredAcls { bindings: acls.bindings }
    }
}

impl Acls {
    /// Checks every binding (a store read from disk can lie).
    pub fn validate(&self) -> Result<(), InvalidAcl> {
        if self.bindings.len() > ACLS_MAX {
            return Err(InvalidAcl(format!("{} bindings, more than {ACLS_MAX}", self.bindings.len())));
        }
        self.bindings.iter().try_for_each(AclBinding::validate)
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.bindings.iter()
    }

    /// Adds `binding` (a no-op when present).
    pub fn add(&mut self, binding: AclBinding) -> Result<(), InvalidAcl> {
        binding.validate()?;
        if self.bindings.len() >= ACLS_MAX && !self.bindings.contains(&binding) {
            return Err(InvalidAcl(format!("the broker holds {ACLS_MAX} ACLs already")));
        }
        if self.bindings.insert(binding.clone()) {
            self.index(binding);
        }
        Ok(())
    }

    fn index(&mut self, binding: AclBinding) {
        let names = self.by_name.entry(binding.resource_type).or_default();
        names.entry(binding.name.clone()).or_default().push(binding);
    }

    fn reindex(&mut self) {
        self.by_name.clear();
        for binding in self.bindings.clone() {
            self.index(binding);
        }
    }

    /// Removes and returns the bindings `filter` matches.
    pub fn remove(&mut self, filter: &AclFilter) -> Vec<AclBinding> {
        let removed: Vec<AclBinding> = self.bindings.iter().filter(|b| filter.matches(b)).cloned().collect();
        for binding in &removed {
            self.bindings.remove(binding);
        }
        if !removed.is_empty() {
            self.reindex();
        }
        removed
    }

    /// The bindings `filter` matches.
    pub fn describe(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.bindings.iter().filter(|b| filter.matches(b)).cloned().collect()
    }

    /// Whether `principal` connecting from `host` may do `operation` on resource
    /// `name` of `kind`: Kafka's rule (see the module note). Super users are not
    /// special here.
    pub fn authorizes(
        &self,
        principal: &str,
        host: &str,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> bool {
        let Some(names) = self.by_name.get(&kind) else { return false };
        // The bindings that can cover `name`: filed under the name itself, under `*`,
        // or under one of its prefixes (checked by `covers` below).
        let prefixes = name.char_indices().map(|(at, _)| &name[..at]).skip(1);
        let candidates =
            [name, WILDCARD].into_iter().chain(prefixes).filter_map(|filed| names.get(filed)).flatten();
        let mut allowed = false;
        for binding in candidates {
            if !binding.covers(kind, name)
                || !(binding.principal == principal || binding.principal == "User:*")
                || !(binding.host == host || binding.host == WILDCARD)
            {
                continue;
            }
            let grants = binding.operation == operation || binding.operation == Operation::All;
            match binding.permission {
                Permission::Deny if grants => return false,
                Permission::Allow if grants || implies(binding.operation, operation) => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    /// Whether `principal` may do `operation` on some resource of `kind` (Kafka's
    /// `authorizeByResourceType`, used for idempotent writes: a Write on any topic).
    pub fn authorizes_any(
        &self,
        principal: &str,
        host: &str,
        operation: Operation,
        kind: ResourceType,
    ) -> bool {
        self.bindings.iter().any(|b| {
            b.resource_type == kind
                && b.permission == Permission::Allow
                && (b.operation == operation || b.operation == Operation::All)
                && (b.principal == principal || b.principal == "User:*")
                && (b.host == host || b.host == WILDCARD)
                && self.authorizes(principal, host, operation, kind, &example_name(b))
        })
    }
}

/// A resource name the binding covers (for `authorizes_any`'s deny check).
fn example_name(binding: &AclBinding) -> String {
    if binding.name == WILDCARD && binding.pattern == PatternType::Literal {
        "\u{0}any".into()
    } else {
        binding.name.clone()
    }
}

/// Whether an Allow of `granted` also allows `wanted` (Kafka's implied operations).
fn implies(granted: Operation, wanted: Operation) -> bool {
    use Operation::*;
    matches!((granted, wanted), (Read | Write | Delete | Alter, Describe) | (AlterConfigs, DescribeConfigs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        kind: ResourceType,
        name: &str,
        pattern: PatternType,
        who: &str,
        op: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: kind,
            name: name.into(),
            pattern,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn no_acl_means_deny_and_deny_wins_over_allow() {
        let mut acls = Acls::default();
        assert!(!acls.authorizes("User:alice", "127.0.0.1", Read, Topic, "payments"));
        acls.add(acl(Topic, "pay", Prefixed, "User:alice", Read, Allow)).unwrap();
        assert!(acls.authorizes("User:alice", "127.0.0.1", Read, Topic, "payments"));
        assert!(
            acls.authorizes("User:alice", "127.0.0.1", Describe, Topic, "payments"),
            "Read implies Describe"
        );
        assert!(!acls.authorizes("User:alice", "127.0.0.1", Write, Topic, "payments"));
        assert!(!acls.authorizes("User:alice", "127.0.0.1", Read, Topic, "orders"));
        assert!(!acls.authorizes("User:bob", "127.0.0.1", Read, Topic, "payments"));
        acls.add(acl(Topic, "payments", Literal, "User:*", Read, Deny)).unwrap();
        assert!(!acls.authorizes("User:alice", "127.0.0.1", Read, Topic, "payments"), "Deny wins");
        assert!(acls.authorizes("User:alice", "127.0.0.1", Read, Topic, "payouts"));
        acls.add(acl(Topic, "*", Literal, "User:carol", All, Allow)).unwrap();
        assert!(acls.authorizes("User:carol", "10.0.0.1", Write, Topic, "anything"));
        assert!(!acls.authorizes("User:carol", "10.0.0.1", Write, Group, "anything"));
        let mut from_host = acl(Group, "g", Literal, "User:dave", Read, Allow);
        from_host.host = "10.1.1.1".into();
        acls.add(from_host).unwrap();
        assert!(acls.authorizes("User:dave", "10.1.1.1", Read, Group, "g"));
        assert!(!acls.authorizes("User:dave", "10.1.1.2", Read, Group, "g"));
    }

    #[test]
    fn the_index_finds_literal_wildcard_and_prefix_bindings_among_many_and_survives_storage() {
        let mut acls = Acls::default();
        for i in 0..5000 {
            acls.add(acl(Topic, &format!("t{i}"), Literal, "User:a", Read, Allow)).unwrap();
        }
        acls.add(acl(Topic, "orders.", Prefixed, "User:b", Write, Allow)).unwrap();
        acls.add(acl(Topic, "*", Literal, "User:c", Read, Allow)).unwrap();
        assert!(acls.authorizes("User:a", "h", Read, Topic, "t4999"));
        assert!(!acls.authorizes("User:a", "h", Read, Topic, "t5000"));
        assert!(acls.authorizes("User:b", "h", Write, Topic, "orders.eu"));
        assert!(!acls.authorizes("User:b", "h", Write, Topic, "orders"));
        assert!(acls.authorizes("User:c", "h", Read, Topic, "anything-ü"));
        let json = serde_json::to_string(&acls).unwrap();
        assert!(!json.contains("by_name"), "only the bindings are stored");
        let back: Acls = serde_json::from_str(&json).unwrap();
        assert_eq!(back, acls);
        assert!(back.authorizes("User:b", "h", Write, Topic, "orders.us"));
        let mut removed = back.clone();
        removed.remove(&AclFilter { principal: Some("User:b".into()), ..AclFilter::default() });
        assert!(!removed.authorizes("User:b", "h", Write, Topic, "orders.us"));
    }

    #[test]
    fn a_deny_of_describe_is_not_implied_by_a_deny_of_read() {
        let mut acls = Acls::default();
        acls.add(acl(Topic, "t", Literal, "User:a", All, Allow)).unwrap();
        acls.add(acl(Topic, "t", Literal, "User:a", Read, Deny)).unwrap();
        assert!(!acls.authorizes("User:a", "h", Read, Topic, "t"));
        assert!(acls.authorizes("User:a", "h", Describe, Topic, "t"));
    }

    #[test]
    fn idempotent_writes_need_a_write_somewhere() {
        let mut acls = Acls::default();
        assert!(!acls.authorizes_any("User:a", "h", Write, Topic));
        acls.add(acl(Topic, "t", Prefixed, "User:a", Write, Allow)).unwrap();
        assert!(acls.authorizes_any("User:a", "h", Write, Topic));
        acls.add(acl(Topic, "t", Prefixed, "User:a", Write, Deny)).unwrap();
        assert!(!acls.authorizes_any("User:a", "h", Write, Topic));
    }

    #[test]
    fn filters_match_as_kafka_does() {
        let mut acls = Acls::default();
        acls.add(acl(Topic, "pay", Prefixed, "User:a", Read, Allow)).unwrap();
        acls.add(acl(Topic, "payments", Literal, "User:b", Write, Allow)).unwrap();
        acls.add(acl(Topic, "*", Literal, "User:c", Read, Allow)).unwrap();
        acls.add(acl(Group, "payments", Literal, "User:a", Read, Allow)).unwrap();
        let matching = AclFilter::new(
            Topic,
            Some("payments".into()),
            Match,
            None,
            None,
            Operation::Any,
            Permission::Any,
        );
        assert_eq!(acls.describe(&matching).len(), 3);
        let literal = AclFilter::new(
            Topic,
            Some("payments".into()),
            Literal,
            None,
            None,
            Operation::Any,
            Permission::Any,
        );
        assert_eq!(acls.describe(&literal).len(), 1);
        let anything = AclFilter::new(
            ResourceType::Any,
            None,
            PatternType::Any,
            None,
            None,
            Operation::Any,
            Permission::Any,
        );
        assert_eq!(acls.describe(&anything).len(), 4);
        let by_user = AclFilter { principal: Some("User:a".into()), ..AclFilter::default() };
        assert_eq!(acls.remove(&by_user).len(), 2);
        assert_eq!(acls.len(), 2);
    }

    #[test]
    fn bindings_that_lie_are_refused() {
        for bad in [
            acl(ResourceType::Any, "t", Literal, "User:a", Read, Allow),
            acl(Topic, "t", Match, "User:a", Read, Allow),
            acl(Topic, "t", Literal, "User:a", Operation::Any, Allow),
            acl(Topic, "t", Literal, "User:a", Read, Permission::Any),
            acl(Topic, "", Literal, "User:a", Read, Allow),
            acl(Topic, "t", Literal, "alice", Read, Allow),
            acl(Cluster, "other", Literal, "User:a", Alter, Allow),
        ] {
            assert!(Acls::default().add(bad.clone()).is_err(), "{bad}");
        }
        let mut bad_host = acl(Topic, "t", Literal, "User:a", Read, Allow);
        bad_host.host = "not-an-ip".into();
        assert!(bad_host.validate().is_err());
        assert_eq!(Operation::from_code(12), Some(IdempotentWrite));
        assert_eq!(Operation::parse("describe_configs"), Some(DescribeConfigs));
        assert_eq!(ResourceType::parse("transactional-id"), Some(TransactionalId));
    }
}
