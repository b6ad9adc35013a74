//! `corelog users` and `corelog acl`: the data directory's SCRAM users and Kafka ACLs,
//! managed from the command line.
//!
//! Both write the store the broker reads (`security::store`), under its lock and
//! durably, so they work whether or not a broker runs on the directory; a running
//! broker picks the change up within `security::store::RELOAD_CHECK_MS`. A password
//! is read from the first line of stdin (without its newline) and never appears in
//! arguments, the environment or a file.

use anyhow::{bail, Context, Result};
use security::acl::{AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType, CLUSTER_NAME};
use security::scram::{Credential, Mechanism, ITERATIONS_DEFAULT};
use security::store::{Store, StoreError};
use std::io::BufRead;
use std::path::PathBuf;

/// `corelog users`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsersArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: UsersAction,
}

/// What `corelog users` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsersAction {
    /// Add a user or change its password (read from the first line of stdin).
    Add {
        /// The data directory and user.
        #[command(flatten)]
        user: UserFlags,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 (default: both; PLAIN accepts either).
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Remove a user's credentials (one mechanism's, or all).
    Remove {
        /// The data directory and user.
        #[command(flatten)]
        user: UserFlags,
        /// Only this mechanism's credential (default: all of the user's).
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// List users and their mechanisms.
    List {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// The data directory and user of `users add|remove`.
#[derive(Debug, Clone, clap::Args)]
pub struct UserFlags {
    /// The broker's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The user name.
    #[arg(long)]
    pub user: String,
}

fn mechanisms(name: Option<&str>) -> Result<Vec<Mechanism>> {
    match name {
        None => Ok(Mechanism::ALL.to_vec()),
        Some(name) => match Mechanism::from_name(name) {
            Some(m) => Ok(vec![m]),
            None => bail!("--mechanism {name:?}: expected SCRAM-SHA-256 or SCRAM-SHA-512"),
        },
    }
}

/// Runs `corelog users`, reading a password from `stdin`; returns what it printed.
pub fn users(args: &UsersArgs, stdin: impl BufRead) -> Result<String> {
    match &args.action {
        UsersAction::Add { user, mechanism } => {
            let mechanisms = mechanisms(mechanism.as_deref())?;
            let mut password = String::new();
            stdin.take(64 << 10).read_line(&mut password).context("reading the password from stdin")?;
            let password = password.strip_suffix('\n').unwrap_or(&password);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                bail!("no password: give it as the first line of stdin");
            }
            let credentials = mechanisms
                .iter()
                .map(|m| Credential::new(*m, password.as_bytes(), ITERATIONS_DEFAULT))
                .collect::<Result<Vec<_>, _>>()?;
            Store::new(&user.data_dir).update_users(|users| {
                credentials.into_iter().try_for_each(|c| users.upsert(&user.user, c))
            })?;
            let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
            Ok(format!("user {} set ({})\n", user.user, names.join(", ")))
        }
        UsersAction::Remove { user, mechanism } => {
            let mechanism = match mechanism {
                None => None,
                Some(name) => Some(mechanisms(Some(name))?[0]),
            };
            let (removed, _) =
                Store::new(&user.data_dir).update_users(|u| Ok(u.remove(&user.user, mechanism)))?;
            if !removed {
                bail!("no such user or credential: {}", user.user);
            }
            Ok(format!("user {} removed\n", user.user))
        }
        UsersAction::List { data_dir } => {
            let users = Store::new(data_dir).users()?;
            let mut out = String::new();
            for (name, mechanisms) in users.list() {
                let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
                out.push_str(&format!("{name}\t{}\n", names.join(",")));
            }
            Ok(out)
        }
    }
}

/// `corelog acl`.
#[derive(Debug, Clone, clap::Args)]
pub struct AclArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: AclAction,
}

/// What `corelog acl` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AclAction {
    /// Add ACLs: each --operation for the principal on the resource.
    Add(AclFlags),
    /// Remove the ACLs these flags match (every operation when none is given).
    Remove(AclFlags),
    /// List ACLs (all, or those the flags match).
    List(AclFlags),
}

/// The flags that name ACLs (Kafka's `kafka-acls` vocabulary).
#[derive(Debug, Clone, clap::Args)]
pub struct AclFlags {
    /// The broker's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// `User:NAME` or `User:*`.
    #[arg(long)]
    pub principal: Option<String>,
    /// Read, Write, Create, Delete, Describe, Alter, DescribeConfigs, AlterConfigs,
    /// IdempotentWrite or All (repeatable).
    #[arg(long = "operation")]
    pub operations: Vec<String>,
    /// A topic name (or prefix with --prefixed; `*` is every topic).
    #[arg(long, group = "resource")]
    pub topic: Option<String>,
    /// A consumer group name (or prefix).
    #[arg(long, group = "resource")]
    pub group: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    pub cluster: bool,
    /// A transactional id (or prefix).
    #[arg(long, group = "resource")]
    pub transactional_id: Option<String>,
    /// The name is a prefix (Kafka's PREFIXED pattern type).
    #[arg(long)]
    pub prefixed: bool,
    /// Deny instead of allow.
    #[arg(long)]
    pub deny: bool,
    /// The client address the ACL applies to (default `*`).
    #[arg(long, default_value = "*")]
    pub host: String,
}

impl AclFlags {
    fn resource(&self) -> Option<(ResourceType, String)> {
        if let Some(topic) = &self.topic {
            Some((ResourceType::Topic, topic.clone()))
        } else if let Some(group) = &self.group {
            Some((ResourceType::Group, group.clone()))
        } else if self.cluster {
            Some((ResourceType::Cluster, CLUSTER_NAME.to_string()))
        } else {
            self.transactional_id.as_ref().map(|id| (ResourceType::TransactionalId, id.clone()))
        }
    }

    fn operations(&self) -> Result<Vec<Operation>> {
        self.operations
            .iter()
            .map(|name| {
                Operation::parse(name)
                    .filter(|op| *op != Operation::Any)
                    .with_context(|| format!("--operation {name:?} is not a Kafka ACL operation"))
            })
            .collect()
    }

    fn pattern(&self) -> PatternType {
        if self.prefixed {
            PatternType::Prefixed
        } else {
            PatternType::Literal
        }
    }

    fn filters(&self) -> Result<Vec<AclFilter>> {
        let resource = self.resource();
        let base = AclFilter {
            resource_type: resource.as_ref().map(|r| r.0),
            name: resource.map(|r| r.1),
            pattern: (self.prefixed || self.topic.is_some() || self.group.is_some()).then(|| self.pattern()),
            principal: self.principal.clone(),
            host: (self.host != "*").then(|| self.host.clone()),
            operation: None,
            permission: self.deny.then_some(Permission::Deny),
        };
        let operations = self.operations()?;
        if operations.is_empty() {
            return Ok(vec![base]);
        }
        Ok(operations.into_iter().map(|op| AclFilter { operation: Some(op), ..base.clone() }).collect())
    }
}

/// Runs `corelog acl`; returns what it printed.
pub fn acl(args: &AclArgs) -> Result<String> {
    match &args.action {
        AclAction::Add(flags) => {
            let principal = flags.principal.clone().context("--principal User:NAME is required")?;
            let (resource_type, name) = flags
                .resource()
                .context("name a resource: --topic, --group, --cluster or --transactional-id")?;
            let operations = flags.operations()?;
            if operations.is_empty() {
                bail!("give at least one --operation");
            }
            let bindings: Vec<AclBinding> = operations
                .into_iter()
                .map(|operation| AclBinding {
                    resource_type,
                    name: name.clone(),
                    pattern: flags.pattern(),
                    principal: principal.clone(),
                    host: flags.host.clone(),
                    operation,
                    permission: if flags.deny { Permission::Deny } else { Permission::Allow },
                })
                .collect();
            Store::new(&flags.data_dir).update_acls(|acls| {
                bindings
                    .iter()
                    .try_for_each(|b| acls.add(b.clone()))
                    .map_err(|e| StoreError::Invalid(e.to_string()))
            })?;
            Ok(bindings.iter().map(|b| format!("added: {b}\n")).collect())
        }
        AclAction::Remove(flags) => {
            let filters = flags.filters()?;
            if flags.principal.is_none() && flags.resource().is_none() {
                bail!("name what to remove: --principal and/or a resource");
            }
            let (removed, _) = Store::new(&flags.data_dir)
                .update_acls(|acls| Ok(filters.iter().flat_map(|f| acls.remove(f)).collect::<Vec<_>>()))?;
            if removed.is_empty() {
                bail!("no ACL matches");
            }
            Ok(removed.iter().map(|b| format!("removed: {b}\n")).collect())
        }
        AclAction::List(flags) => {
            let acls = Store::new(&flags.data_dir).acls()?;
            let mut listed: Vec<&AclBinding> =
                flags.filters()?.iter().flat_map(|f| acls.iter().filter(|b| f.matches(b))).collect();
            listed.sort();
            listed.dedup();
            Ok(listed.iter().map(|b| format!("{b}\n")).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &std::path::Path) -> AclFlags {
        AclFlags {
            data_dir: dir.to_path_buf(),
            principal: Some("User:alice".into()),
            operations: vec!["read".into(), "Describe".into()],
            topic: Some("pay".into()),
            group: None,
            cluster: false,
            transactional_id: None,
            prefixed: true,
            deny: false,
            host: "*".into(),
        }
    }

    #[test]
    fn users_and_acls_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserFlags { data_dir: dir.path().into(), user: "alice".into() };
        let add = UsersArgs { action: UsersAction::Add { user: user.clone(), mechanism: None } };
        users(&add, &b"s3cret\nignored\n"[..]).unwrap();
        let stored = Store::new(dir.path()).users().unwrap();
        let credential = stored.credential("alice", Mechanism::ScramSha512).unwrap();
        assert!(credential.verify_password(b"s3cret"), "the newline is not part of the password");
        let text = std::fs::read_to_string(dir.path().join(security::store::USERS_FILE)).unwrap();
        assert!(!text.contains("s3cret"), "no plaintext password on disk");
        assert!(users(&add, &b""[..]).is_err(), "an empty password is refused");
        let list = UsersArgs { action: UsersAction::List { data_dir: dir.path().into() } };
        assert_eq!(users(&list, &b""[..]).unwrap(), "alice\tSCRAM-SHA-256,SCRAM-SHA-512\n");

        let added = acl(&AclArgs { action: AclAction::Add(flags(dir.path())) }).unwrap();
        assert_eq!(added.lines().count(), 2, "{added}");
        let acls = Store::new(dir.path()).acls().unwrap();
        assert!(acls.authorizes("User:alice", "1.2.3.4", Operation::Read, ResourceType::Topic, "payments"));
        let listed = acl(&AclArgs { action: AclAction::List(flags(dir.path())) }).unwrap();
        assert_eq!(listed.lines().count(), 2, "{listed}");
        let mut remove = flags(dir.path());
        remove.operations = vec!["Read".into()];
        acl(&AclArgs { action: AclAction::Remove(remove) }).unwrap();
        assert_eq!(Store::new(dir.path()).acls().unwrap().len(), 1);
        let mut bad = flags(dir.path());
        bad.operations = vec!["fly".into()];
        assert!(acl(&AclArgs { action: AclAction::Add(bad) }).is_err());
    }
}
