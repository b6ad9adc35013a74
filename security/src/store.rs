//! The security store: users' SCRAM credentials (`users.json`) and ACLs (`acls.json`)
//! in the data directory, shared by the broker and the `corelog users` / `corelog acl`
//! commands.
//!
//! Owns: reading (bounded, validated: a file can lie), writing durably (temporary
//! file, fsync, rename, directory fsync, so a crash leaves the old or the new file,
//! never a torn one), and serialising read-modify-write updates between processes
//! with an advisory lock (`security.lock`), so a command and a running broker never
//! lose each other's changes.
//!
//! A broker notices a change written by another process through [`Watched`]: it
//! compares the file's identity (inode, size, modification time) at most once per
//! [`RELOAD_CHECK_MS`] and re-reads it when it changed.
//!
//! Never: keeps a password (only [`crate::scram::Credential`]s) or a clock of its own
//! (time is an argument).

use crate::acl::Acls;
use crate::scram::{Credential, Mechanism};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// The users file in the data directory.
pub const USERS_FILE: &str = "users.json";
/// The ACLs file in the data directory.
pub const ACLS_FILE: &str = "acls.json";
/// The lock that serialises updates of both files.
pub const LOCK_FILE: &str = "security.lock";
/// Largest users or ACLs file read.
pub const STORE_FILE_BYTES_MAX: u64 = 64 << 20;
/// Most users the store holds.
pub const USERS_MAX: usize = 100_000;
/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 256;
/// How often a broker checks whether another process changed a store file.
pub const RELOAD_CHECK_MS: i64 = 1000;
/// A store file's identity: inode, size, modification time (s, ns).
type Stamp = (u64, u64, i64, i64);

/// The file format version written and read.
const STORE_VERSION: u32 = 1;

/// Every user's credentials, one per mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    users: BTreeMap<String, BTreeMap<Mechanism, Credential>>,
}

impl Users {
    /// The credential of `user` for `mechanism`.
    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<&Credential> {
        self.users.get(user)?.get(&mechanism)
    }

    /// Every credential of `user`.
    pub fn credentials(&self, user: &str) -> impl Iterator<Item = &Credential> {
        self.users.get(user).into_iter().flat_map(|m| m.values())
    }

    /// User names with their mechanisms.
    pub fn list(&self) -> impl Iterator<Item = (&str, Vec<Mechanism>)> {
        self.users.iter().map(|(name, m)| (name.as_str(), m.keys().copied().collect()))
    }

    /// Sets `user`'s credential for its mechanism.
    pub fn upsert(&mut self, user: &str, credential: Credential) -> Result<(), StoreError> {
        check_user_name(user)?;
        credential.keys().map_err(|e| StoreError::Invalid(e.to_string()))?;
        if !self.users.contains_key(user) && self.users.len() >= USERS_MAX {
            return Err(StoreError::Invalid(format!("the store holds {USERS_MAX} users already")));
        }
        self.users.entry(user.to_string()).or_default().insert(credential.mechanism, credential);
        Ok(())
    }

    /// Removes `user`'s credential for `mechanism` (every one when `None`); whether
    /// anything was removed.
    pub fn remove(&mut self, user: &str, mechanism: Option<Mechanism>) -> bool {
        let Some(credentials) = self.users.get_mut(user) else { return false };
        let removed = match mechanism {
            None => !std::mem::take(credentials).is_empty(),
            Some(m) => credentials.remove(&m).is_some(),
        };
        if credentials.is_empty() {
            self.users.remove(user);
        }
        removed
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.users.len() > USERS_MAX {
            return Err(StoreError::Invalid(format!("more than {USERS_MAX} users")));
        }
        for (name, credentials) in &self.users {
            check_user_name(name)?;
            for (mechanism, credential) in credentials {
                if credential.mechanism != *mechanism {
                    return Err(StoreError::Invalid(format!(
                        "{name}: credential filed under another mechanism"
                    )));
                }
                credential.keys().map_err(|e| StoreError::Invalid(format!("{name}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// User names no client may take: the query engine's internal principal and the
/// unauthenticated one.
pub const RESERVED_USERS: [&str; 2] = ["corelog-internal", "ANONYMOUS"];

/// Checks a user name: 1..=256 bytes, printable, no `,` `=` `:` or whitespace
/// (they would need escaping in SCRAM and would be ambiguous in principals), not one of
/// [`RESERVED_USERS`].
pub fn check_user_name(user: &str) -> Result<(), StoreError> {
    let ok = !user.is_empty()
        && user.len() <= USER_NAME_BYTES_MAX
        && user.chars().all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, ',' | '=' | ':'))
        && !RESERVED_USERS.contains(&user);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "user name {user:?}: 1 to {USER_NAME_BYTES_MAX} bytes, no spaces, ',', '=' or ':', not {RESERVED_USERS:?}"
        )))
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct UsersFile {
    version: u32,
    #[serde(flatten)]
    users: Users,
}

#[derive(Serialize, Deserialize)]
struct AclsFile {
    version: u32,
    #[serde(flatten)]
    acls: Acls,
}

/// The store of one data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the users (none when the file does not exist).
    pub fn users(&self) -> Result<Users, StoreError> {
        let path = self.dir.join(USERS_FILE);
        let Some(file) = read_json::<UsersFile>(&path)? else { return Ok(Users::default()) };
        check_version(&path, file.version)?;
        file.users.validate().map_err(|e| corrupt(&path, e.to_string()))?;
        Ok(file.users)
    }

    /// Reads the ACLs (none when the file does not exist).
    pub fn acls(&self) -> Result<Acls, StoreError> {
        let path = self.dir.join(ACLS_FILE);
        let Some(file) = read_json::<AclsFile>(&path)? else { return Ok(Acls::default()) };
        check_version(&path, file.version)?;
        file.acls.validate().map_err(|e| corrupt(&path, e.to_string()))?;
        Ok(file.acls)
    }

    /// Changes the users under the store's lock and writes them durably; returns what
    /// `change` returned and the users written.
    pub fn update_users<T>(
        &self,
        change: impl FnOnce(&mut Users) -> Result<T, StoreError>,
    ) -> Result<(T, Users), StoreError> {
        let _lock = self.lock()?;
        let mut users = self.users()?;
        let out = change(&mut users)?;
        let json = serde_json::to_vec_pretty(&UsersFile { version: STORE_VERSION, users: users.clone() })
            .expect("users serialise");
        write_durably(&self.dir, USERS_FILE, &json)?;
        Ok((out, users))
    }

    /// Changes the ACLs under the store's lock and writes them durably.
    pub fn update_acls<T>(
        &self,
        change: impl FnOnce(&mut Acls) -> Result<T, StoreError>,
    ) -> Result<(T, Acls), StoreError> {
        let _lock = self.lock()?;
        let mut acls = self.acls()?;
        let out = change(&mut acls)?;
        let json = serde_json::to_vec_pretty(&AclsFile { version: STORE_VERSION, acls: acls.clone() })
            .expect("ACLs serialise");
        write_durably(&self.dir, ACLS_FILE, &json)?;
        Ok((out, acls))
    }

    fn lock(&self) -> Result<FileLock, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|error| io(&self.dir, error))?;
        FileLock::exclusive(&self.dir.join(LOCK_FILE))
    }

    /// The identity of a store file (changes whenever it is replaced).
    fn stamp(&self, file: &str) -> Option<Stamp> {
        let meta = std::fs::metadata(self.dir.join(file)).ok()?;
        Some((meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()))
    }
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), error }
}

fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), reason }
}

fn check_version(path: &Path, version: u32) -> Result<(), StoreError> {
    if version == STORE_VERSION {
        Ok(())
    } else {
        Err(corrupt(path, format!("format version {version}, this build reads {STORE_VERSION}")))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(path, error)),
    };
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    if len > STORE_FILE_BYTES_MAX {
        return Err(corrupt(path, format!("{len} bytes, more than {STORE_FILE_BYTES_MAX}")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, STORE_FILE_BYTES_MAX), &mut bytes)
        .map_err(|e| io(path, e))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(path, e.to_string()))
}

/// Writes `name` in `dir` so that a crash leaves the old or the new contents.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(|e| io(&temporary, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| io(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| io(&path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

/// An exclusive advisory lock on a file, released on drop.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn exclusive(path: &Path) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        // SAFETY: flock on a descriptor this function owns; blocking is fine (updates
        // are rare and short).
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(path, std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

/// A store file's contents as a broker sees them: cached, re-read when another process
/// replaced the file (checked at most once per [`RELOAD_CHECK_MS`]).
#[derive(Debug)]
pub struct Watched<T> {
    store: Store,
    file: &'static str,
    read: fn(&Store) -> Result<T, StoreError>,
    current: RwLock<(Arc<T>, Option<Stamp>)>,
    checked_ms: AtomicI64,
}

impl<T> Watched<T> {
    /// Reads the file now; an unreadable or lying file is an error (a broker must not
    /// start with an empty ACL set because its file was damaged).
    pub fn open(
        store: Store,
        file: &'static str,
        read: fn(&Store) -> Result<T, StoreError>,
    ) -> Result<Self, StoreError> {
        let stamp = store.stamp(file);
        let value = read(&store)?;
        Ok(Self {
            store,
            file,
            read,
            current: RwLock::new((Arc::new(value), stamp)),
            checked_ms: AtomicI64::new(0),
        })
    }

    /// The current contents at `now_ms`. A file that changed but no longer reads is
    /// logged by the caller's error and the last good contents stay.
    pub fn get(&self, now_ms: i64) -> Arc<T> {
        let checked = self.checked_ms.load(Ordering::Relaxed);
        if now_ms - checked >= RELOAD_CHECK_MS
            && self.checked_ms.compare_exchange(checked, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let stamp = self.store.stamp(self.file);
            let known = self.current.read().expect("store cache lock").1;
            if stamp != known {
                let mut current = self.current.write().expect("store cache lock");
                match (self.read)(&self.store) {
                    Ok(value) => *current = (Arc::new(value), stamp),
                    Err(error) => {
                        // Said once per change of the file, not at every check.
                        current.1 = stamp;
                        eprintln!("corelog: keeping the last good {}: {error}", self.file);
                    }
                }
            }
        }
        self.current.read().expect("store cache lock").0.clone()
    }

    /// Sets the contents after this process wrote them.
    pub fn set(&self, value: T) {
        let stamp = self.store.stamp(self.file);
        *self.current.write().expect("store cache lock") = (Arc::new(value), stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AclBinding, Operation, PatternType, Permission, ResourceType};

    #[test]
    fn users_and_acls_survive_a_reopen_and_a_watcher_sees_another_process_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let users = Watched::open(store.clone(), USERS_FILE, Store::users).unwrap();
        assert!(users.get(0).list().next().is_none());
        let credential = Credential::new(Mechanism::ScramSha256, b"pw", 4096).unwrap();
        store.update_users(|u| u.upsert("alice", credential.clone())).unwrap();
        let again = Store::new(dir.path()).users().unwrap();
        assert_eq!(again.credential("alice", Mechanism::ScramSha256), Some(&credential));
        assert!(users.get(500).credential("alice", Mechanism::ScramSha256).is_none(), "not checked yet");
        assert!(users.get(1000).credential("alice", Mechanism::ScramSha256).is_some());
        let binding = AclBinding {
            resource_type: ResourceType::Topic,
            name: "t".into(),
            pattern: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        store
            .update_acls(|a| a.add(binding.clone()).map_err(|e| StoreError::Invalid(e.to_string())))
            .unwrap();
        assert_eq!(store.acls().unwrap().iter().next(), Some(&binding));
        assert!(store.update_users(|u| Ok(u.remove("alice", None))).unwrap().0);
        assert!(store.users().unwrap().list().next().is_none());
        // A file that changes into a lie keeps the last good contents, and refuses
        // updates (a damaged store is never silently replaced).
        std::fs::write(dir.path().join(USERS_FILE), b"{\"version\": 1, \"users\": {\"x\": 3}}").unwrap();
        assert!(users.get(3000).credential("alice", Mechanism::ScramSha256).is_some());
        assert!(store.update_users(|u| Ok(u.remove("alice", None))).is_err());
    }

    #[test]
    fn store_files_that_lie_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let credential = Credential::new(Mechanism::ScramSha512, b"pw", 4096).unwrap();
        store.update_users(|u| u.upsert("alice", credential)).unwrap();
        let path = dir.path().join(USERS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // Valid JSON, wrong iteration count: refused at read.
        std::fs::write(&path, text.replace("\"iterations\": 4096", "\"iterations\": 4000000000")).unwrap();
        assert!(matches!(store.users(), Err(StoreError::Corrupt { .. })));
        // A credential filed under the other mechanism.
        std::fs::write(&path, text.replacen("\"SCRAM-SHA-512\": {", "\"SCRAM-SHA-256\": {", 1)).unwrap();
        assert!(matches!(store.users(), Err(StoreError::Corrupt { .. })), "{:?}", store.users());
        std::fs::write(dir.path().join(ACLS_FILE), br#"{"version":1,"bindings":[{"resource_type":"Any","name":"x","pattern":"Literal","principal":"User:a","host":"*","operation":"Read","permission":"Allow"}]}"#).unwrap();
        assert!(matches!(store.acls(), Err(StoreError::Corrupt { .. })));
        std::fs::write(dir.path().join(ACLS_FILE), br#"{"version":9,"bindings":[]}"#).unwrap();
        assert!(matches!(store.acls(), Err(StoreError::Corrupt { .. })));
        assert!(
            check_user_name("a,b").is_err()
                && check_user_name("").is_err()
                && check_user_name("ok-user").is_ok()
        );
        assert!(check_user_name("corelog-internal").is_err());
    }
}
