//! Consumer groups: Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch).
//!
//! The coordinator is control-plane state shared by every shard (a mutex per engine,
//! never taken on the append or fetch path); members wait for rebalances on a `watch`
//! channel, so a JoinGroup arriving on shard 0 and one arriving on shard 1 meet in the
//! same generation. Partition assignment is done by the clients (the leader's
//! SyncGroup carries it), as in Kafka.
//!
//! Rebalance: a join (or a leave, or an expired session) moves the group to
//! PreparingRebalance; it completes when every known member has rejoined or the
//! rebalance deadline passes (members that did not rejoin are dropped). Completion bumps
//! the generation and picks the leader and a protocol every member supports; then the
//! leader's SyncGroup publishes the assignment and the group is Stable.
//!
//! Committed offsets are durable: each commit rewrites `DATA/__groups/<group>.offsets`
//! (write temp, fsync, rename, fsync dir), format `corelog-offsets 1` then one
//! `topic partition offset metadata-hex` line per partition (see docs/FORMATS.md).
//!
//! Committed offsets expire as Kafka's do (KIP-211): once a group has had no member and
//! no commit for the retention period (`--offsets-retention`, 7 days), its offsets and
//! its file are deleted. A group's idle time starts from its file's mtime at open.
//!
//! Invariants: a member's generation equals the group's only after a completed join;
//! generations only grow; an offset commit with a generation is accepted only from a
//! current member of that generation.

use crate::disk::{Disk, OsDisk};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Kafka error codes the coordinator answers with (values from `kafka-protocol`'s
/// `ResponseError`).
pub mod code {
    use kafka_protocol::ResponseError as E;

    /// No error.
    pub const NONE: i16 = 0;
    /// The generation is not the group's current one.
    pub const ILLEGAL_GENERATION: i16 = E::IllegalGeneration.code();
    /// The protocol type or protocols do not match the group's.
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = E::InconsistentGroupProtocol.code();
    /// The group id is empty or invalid.
    pub const INVALID_GROUP_ID: i16 = E::InvalidGroupId.code();
    /// The member is not in the group.
    pub const UNKNOWN_MEMBER_ID: i16 = E::UnknownMemberId.code();
    /// The session timeout is out of range.
    pub const INVALID_SESSION_TIMEOUT: i16 = E::InvalidSessionTimeout.code();
    /// The group is rebalancing: rejoin.
    pub const REBALANCE_IN_PROGRESS: i16 = E::RebalanceInProgress.code();
    /// Writing committed offsets failed.
    pub const KAFKA_STORAGE_ERROR: i16 = E::KafkaStorageError.code();
}

/// Delay before the first rebalance of an empty group completes, so that members
/// starting together land in one generation (Kafka's group.initial.rebalance.delay.ms
/// is 3 s; consumers in tests start within milliseconds).
pub const INITIAL_REBALANCE_DELAY_MS: u64 = 300;
/// Session timeouts accepted (Kafka's group.min/max.session.timeout.ms).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
/// Upper bound of session timeouts.
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Longest a JoinGroup waits for a rebalance to complete.
pub const REBALANCE_TIMEOUT_MS_MAX: u64 = 300_000;
/// Members per group.
pub const GROUP_MEMBERS_MAX: usize = 10_000;
/// Directory under the data dir holding committed offsets.
pub const GROUPS_DIR: &str = "__groups";
/// Longest group id: its hex form names the group's offsets file, and a file name has
/// at most 255 bytes.
pub const GROUP_ID_BYTES_MAX: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

#[derive(Debug)]
struct Member {
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    /// Rejoined during the current rebalance.
    joined: bool,
    generation: i32,
    last_heartbeat: Instant,
    assignment: Bytes,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Instant,
    offsets: BTreeMap<(String, i32), (i64, Option<String>)>,
    /// Wall-clock ms when the group last had a member or a commit.
    active_ms: i64,
    changed: watch::Sender<u64>,
}

impl Group {
    fn new() -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            rebalance_deadline: Instant::now(),
            offsets: BTreeMap::new(),
            active_ms: crate::types::now_ms(),
            changed: watch::Sender::new(0),
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        let longest = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        let delay = if self.state == State::Empty {
            Duration::from_millis(INITIAL_REBALANCE_DELAY_MS)
        } else {
            longest.min(Duration::from_millis(REBALANCE_TIMEOUT_MS_MAX))
        };
        if self.state != State::PreparingRebalance {
            for member in self.members.values_mut() {
                member.joined = false;
            }
            self.rebalance_deadline = now + delay;
        }
        self.state = State::PreparingRebalance;
        tracing::debug!(generation = self.generation, members = self.members.len(), "group rebalancing");
        self.notify();
    }

    /// Completes the rebalance when every member rejoined, or the deadline passed.
    fn maybe_complete(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.joined);
        let initial_delay_over = now >= self.rebalance_deadline || self.generation > 0;
        if !(all_joined && initial_delay_over) && now < self.rebalance_deadline {
            return;
        }
        self.members.retain(|_, m| m.joined);
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            self.notify();
            return;
        }
        self.generation = self.generation.checked_add(1).expect("generations fit i32");
        self.protocol = self.select_protocol();
        if self.leader.as_ref().is_none_or(|l| !self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        let generation = self.generation;
        for member in self.members.values_mut() {
            member.generation = generation;
            member.assignment = Bytes::new();
            member.last_heartbeat = now;
        }
        self.state = State::CompletingRebalance;
        tracing::debug!(generation = self.generation, members = self.members.len(), leader = ?self.leader, "group rebalanced");
        self.notify();
    }

    /// The leader's first protocol that every member supports.
    fn select_protocol(&self) -> Option<String> {
        let leader = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())?;
        leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *name)))
            .cloned()
    }

    fn expire(&mut self, now: Instant) {
        let before = self.members.len();
        let rebalancing = self.state == State::PreparingRebalance;
        self.members.retain(|_, m| {
            (rebalancing && m.joined) || now.duration_since(m.last_heartbeat) <= m.session_timeout
        });
        if self.members.len() != before {
            self.prepare_rebalance(now);
        }
        self.maybe_complete(now);
    }

    /// What every step of the coordinator keeps (TigerBeetle-style: asserted, not
    /// hoped): an empty group has no leader; once a rebalance completed, the leader is
    /// a member and every member holds the group's generation; no member is ahead of
    /// the group; generations are never negative; the group has at most
    /// [`GROUP_MEMBERS_MAX`] members.
    fn assert_invariants(&self) {
        assert!(self.generation >= 0, "negative generation {}", self.generation);
        assert!(self.members.len() <= GROUP_MEMBERS_MAX, "{} members", self.members.len());
        for (id, member) in &self.members {
            assert!(
                member.generation <= self.generation,
                "member {id} in generation {} ahead of the group's {}",
                member.generation,
                self.generation
            );
        }
        match self.state {
            State::Empty => assert!(self.leader.is_none(), "an empty group has a leader"),
            State::CompletingRebalance | State::Stable => {
                let leader = self.leader.as_ref().expect("a rebalanced group has a leader");
                assert!(self.members.contains_key(leader), "leader {leader} is not a member");
                assert!(
                    self.members.values().all(|m| m.generation == self.generation),
                    "a member of a rebalanced group missed generation {}",
                    self.generation
                );
            }
            State::PreparingRebalance => {}
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> i16 {
        match self.members.get(member_id) {
            None => code::UNKNOWN_MEMBER_ID,
            Some(_) if self.state == State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            Some(member) if member.generation != generation || generation != self.generation => {
                code::ILLEGAL_GENERATION
            }
            Some(_) => code::NONE,
        }
    }
}

/// What JoinGroup answers.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    /// Kafka error code.
    pub error_code: i16,
    /// The new generation.
    pub generation: i32,
    /// The chosen protocol.
    pub protocol: Option<String>,
    /// The protocol type.
    pub protocol_type: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// Every member and its metadata (only for the leader).
    pub members: Vec<(String, Bytes)>,
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Group id.
    pub group: String,
    /// Member id ("" for a new member).
    pub member_id: String,
    /// Client id from the request header.
    pub client_id: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type, e.g. "consumer".
    pub protocol_type: String,
    /// Supported protocols and their metadata.
    pub protocols: Vec<(String, Bytes)>,
}

/// The group coordinator of one engine.
#[derive(Debug)]
pub struct Coordinator {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// How long a group with no member and no commit keeps its offsets.
    offsets_retention_ms: u64,
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Coordinator {
    /// Opens the coordinator, loading committed offsets from `data_dir/__groups`.
    pub fn open(data_dir: &Path, offsets_retention_ms: u64) -> std::io::Result<Self> {
        Self::open_on(OsDisk::shared(), data_dir, offsets_retention_ms)
    }

    /// [`Coordinator::open`] on `disk`: the committed-offset files go through it (the
    /// simulator's disk under simulation).
    pub fn open_on(disk: Arc<dyn Disk>, data_dir: &Path, offsets_retention_ms: u64) -> std::io::Result<Self> {
        let dir = data_dir.join(GROUPS_DIR);
        disk.create_dir_all(&dir)?;
        let mut groups = HashMap::new();
        let mut paths = disk.list(&dir)?;
        paths.sort();
        for path in paths {
            let Some(name) =
                path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".offsets"))
            else {
                continue;
            };
            let Some(group_id) = unhex(name).and_then(|b| String::from_utf8(b).ok()) else { continue };
            let text = String::from_utf8(disk.read(&path)?)
                .map_err(|_| std::io::Error::other(format!("{}: not UTF-8", path.display())))?;
            let mut lines = text.lines();
            if lines.next() != Some("corelog-offsets 1") {
                return Err(std::io::Error::other(format!("{}: unknown format", path.display())));
            }
            let mut group = Group::new();
            group.active_ms = disk.mtime_ms(&path)?;
            for line in lines {
                let fields: Vec<&str> = line.split(' ').collect();
                if let [topic, partition, offset, metadata] = fields.as_slice() {
                    let (Ok(partition), Ok(offset)) = (partition.parse(), offset.parse()) else { continue };
                    let metadata = (*metadata != "-")
                        .then(|| unhex(metadata).and_then(|b| String::from_utf8(b).ok()))
                        .flatten();
                    group.offsets.insert((topic.to_string(), partition), (offset, metadata));
                }
            }
            groups.insert(group_id, group);
        }
        Ok(Self {
            disk,
            dir,
            offsets_retention_ms,
            groups: Mutex::new(groups),
            next_member: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs `f` on `group` under the lock, asserting that generations only grow and
    /// that the group's invariants hold after it.
    fn with_group<R>(&self, group: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        let mut groups = self.groups.lock().expect("group map lock");
        let group = groups.entry(group.to_string()).or_insert_with(Group::new);
        let generation = group.generation;
        let result = f(group);
        assert!(
            group.generation >= generation,
            "generation went back from {generation} to {}",
            group.generation
        );
        group.assert_invariants();
        result
    }

    /// Joins (or rejoins) a member and waits for the rebalance to complete.
    pub async fn join(&self, request: JoinRequest) -> JoinResult {
        tracing::debug!(group = request.group, member = request.member_id, "join");
        let failed = |error_code| JoinResult {
            error_code,
            member_id: request.member_id.clone(),
            ..JoinResult::default()
        };
        if request.group.is_empty() || request.group.len() > GROUP_ID_BYTES_MAX {
            return failed(code::INVALID_GROUP_ID);
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_timeout_ms) {
            return failed(code::INVALID_SESSION_TIMEOUT);
        }
        let now = Instant::now();
        let joined = self.with_group(&request.group, |group| {
            if group.protocol_type.as_ref().is_some_and(|t| *t != request.protocol_type)
                && !group.members.is_empty()
            {
                return Err(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let member_id = if request.member_id.is_empty() {
                let n = self.next_member.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}-{n}-{}", request.client_id, crate::types::now_ms())
            } else if group.members.contains_key(&request.member_id) {
                request.member_id.clone()
            } else {
                return Err(code::UNKNOWN_MEMBER_ID);
            };
            if !group.members.contains_key(&member_id) && group.members.len() >= GROUP_MEMBERS_MAX {
                return Err(code::INVALID_GROUP_ID);
            }
            let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                joined: false,
                generation: -1,
                last_heartbeat: now,
                assignment: Bytes::new(),
            });
            member.session_timeout = Duration::from_millis(request.session_timeout_ms as u64);
            member.rebalance_timeout = Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64);
            member.protocols = request.protocols.clone();
            member.last_heartbeat = now;
            group.protocol_type = Some(request.protocol_type.clone());
            group.prepare_rebalance(now);
            group.members.get_mut(&member_id).expect("inserted above").joined = true;
            group.maybe_complete(now);
            Ok((member_id, group.changed.subscribe()))
        });
        let (member_id, mut changed) = match joined {
            Ok(joined) => joined,
            Err(error_code) => return failed(error_code),
        };
        loop {
            let (result, deadline) = self.with_group(&request.group, |group| {
                let now = Instant::now();
                group.maybe_complete(now);
                let Some(member) = group.members.get(&member_id) else {
                    return (
                        Some(JoinResult {
                            error_code: code::UNKNOWN_MEMBER_ID,
                            member_id: member_id.clone(),
                            ..JoinResult::default()
                        }),
                        now,
                    );
                };
                if group.state == State::PreparingRebalance || member.generation != group.generation {
                    return (None, group.rebalance_deadline);
                }
                let leader = group.leader.clone().unwrap_or_default();
                let protocol = group.protocol.clone();
                let members = if leader == member_id {
                    group
                        .members
                        .iter()
                        .map(|(id, m)| {
                            let metadata = m
                                .protocols
                                .iter()
                                .find(|(n, _)| Some(n) == protocol.as_ref())
                                .map(|(_, b)| b.clone());
                            (id.clone(), metadata.unwrap_or_default())
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let result = JoinResult {
                    error_code: if protocol.is_some() {
                        code::NONE
                    } else {
                        code::INCONSISTENT_GROUP_PROTOCOL
                    },
                    generation: group.generation,
                    protocol,
                    protocol_type: group.protocol_type.clone(),
                    leader,
                    member_id: member_id.clone(),
                    members,
                };
                (Some(result), now)
            });
            if let Some(result) = result {
                return result;
            }
            let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            let _ = tokio::time::timeout(wait, changed.changed()).await;
        }
    }

    /// Stores the leader's assignment (if this is the leader) and waits for it.
    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes) {
        let mut changed = match self.with_group(group_id, |group| {
            let error = group.check_member(member_id, generation);
            if error != code::NONE {
                return Err(error);
            }
            if group.leader.as_deref() == Some(member_id) && group.state == State::CompletingRebalance {
                for (member, assignment) in assignments {
                    if let Some(m) = group.members.get_mut(&member) {
                        m.assignment = assignment;
                    }
                }
                group.state = State::Stable;
                group.notify();
            }
            Ok(group.changed.subscribe())
        }) {
            Ok(changed) => changed,
            Err(error) => return (error, Bytes::new()),
        };
        loop {
            let done = self.with_group(group_id, |group| {
                if group.generation != generation || group.state == State::PreparingRebalance {
                    return Some((code::REBALANCE_IN_PROGRESS, Bytes::new()));
                }
                match group.members.get(member_id) {
                    None => Some((code::UNKNOWN_MEMBER_ID, Bytes::new())),
                    Some(member) if group.state == State::Stable => {
                        Some((code::NONE, member.assignment.clone()))
                    }
                    Some(_) => None,
                }
            });
            if let Some(done) = done {
                return done;
            }
            if tokio::time::timeout(Duration::from_secs(60), changed.changed()).await.is_err() {
                return (code::REBALANCE_IN_PROGRESS, Bytes::new());
            }
        }
    }

    /// Records a heartbeat; tells the member to rejoin when a rebalance started.
    pub fn heartbeat(&self, group_id: &str, generation: i32, member_id: &str) -> i16 {
        tracing::trace!(group = group_id, member = member_id, generation, "heartbeat");
        self.with_group(group_id, |group| {
            let now = Instant::now();
            group.expire(now);
            let error = group.check_member(member_id, generation);
            if let Some(member) = group.members.get_mut(member_id) {
                member.last_heartbeat = now;
            }
            error
        })
    }

    /// Removes members; the rest rebalance.
    pub fn leave(&self, group_id: &str, member_ids: &[String]) -> Vec<i16> {
        tracing::debug!(group = group_id, ?member_ids, "leave");
        self.with_group(group_id, |group| {
            let errors: Vec<i16> =
                member_ids
                    .iter()
                    .map(|id| {
                        if group.members.remove(id).is_some() {
                            code::NONE
                        } else {
                            code::UNKNOWN_MEMBER_ID
                        }
                    })
                    .collect();
            if errors.contains(&code::NONE) {
                if group.leader.as_ref().is_some_and(|l| !group.members.contains_key(l)) {
                    group.leader = None;
                }
                if group.members.is_empty() {
                    group.state = State::Empty;
                    group.notify();
                } else {
                    group.prepare_rebalance(Instant::now());
                }
            }
            errors
        })
    }

    /// Expires members whose sessions ran out, completes overdue rebalances and
    /// expires the offsets of groups idle for the retention period.
    pub fn tick(&self) {
        self.tick_at(crate::types::now_ms());
    }

    /// [`Coordinator::tick`] with the wall clock at `now_ms`.
    fn tick_at(&self, now_ms: i64) {
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("group map lock");
        for (group_id, group) in groups.iter_mut() {
            let generation = group.generation;
            group.expire(now);
            assert!(group.generation >= generation, "generation went back");
            group.assert_invariants();
            if !group.members.is_empty() {
                group.active_ms = group.active_ms.max(now_ms);
                continue;
            }
            let idle_ms = u64::try_from(now_ms.saturating_sub(group.active_ms)).unwrap_or(0);
            if !group.offsets.is_empty() && idle_ms >= self.offsets_retention_ms {
                match self.forget(group_id) {
                    Ok(()) => {
                        tracing::info!(group = group_id, idle_ms, "committed offsets expired");
                        group.offsets.clear();
                    }
                    Err(error) => tracing::warn!(group = group_id, "expiring offsets failed: {error}"),
                }
            }
        }
        // Groups with no members and no offsets (a heartbeat or sync for a group that
        // never was) hold nothing worth keeping.
        groups.retain(|_, group| !group.members.is_empty() || !group.offsets.is_empty());
    }

    /// Commits offsets durably. `generation < 0` with an empty member id is a simple
    /// (group-less) commit, as Kafka allows, and only to a group with no members.
    pub fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        offsets: &[(String, i32, i64, Option<String>)],
    ) -> i16 {
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return code::INVALID_GROUP_ID;
        }
        let mut groups = self.groups.lock().expect("group map lock");
        let group = groups.entry(group_id.to_string()).or_insert_with(Group::new);
        if generation >= 0 || !member_id.is_empty() || !group.members.is_empty() {
            // A simple commit (no generation, no member) only to a group with no
            // members, as Kafka allows: it must not overwrite a live member's offsets.
            let error = group.check_member(member_id, generation);
            if error != code::NONE {
                return error;
            }
        }
        for (topic, partition, offset, metadata) in offsets {
            group.offsets.insert((topic.clone(), *partition), (*offset, metadata.clone()));
        }
        group.active_ms = group.active_ms.max(crate::types::now_ms());
        match self.persist(group_id, group) {
            Ok(()) => code::NONE,
            Err(error) => {
                tracing::error!(group = group_id, "committing offsets failed: {error}");
                code::KAFKA_STORAGE_ERROR
            }
        }
    }

    /// Committed offset and metadata of one partition, if any.
    pub fn committed(&self, group_id: &str, topic: &str, partition: i32) -> Option<(i64, Option<String>)> {
        let groups = self.groups.lock().expect("group map lock");
        groups.get(group_id)?.offsets.get(&(topic.to_string(), partition)).cloned()
    }

    /// Every committed (topic, partition) of a group.
    pub fn committed_partitions(&self, group_id: &str) -> Vec<(String, i32)> {
        let groups = self.groups.lock().expect("group map lock");
        groups.get(group_id).map(|g| g.offsets.keys().cloned().collect()).unwrap_or_default()
    }

    /// Drops every committed offset whose topic `keep` refuses, durably (a group left
    /// with no offsets and no members is forgotten).
    pub fn retain_topics(&self, keep: impl Fn(&str) -> bool) -> std::io::Result<()> {
        let mut groups = self.groups.lock().expect("group map lock");
        for (group_id, group) in groups.iter_mut() {
            let before = group.offsets.len();
            group.offsets.retain(|(topic, _), _| keep(topic));
            if group.offsets.len() == before {
                continue;
            }
            if group.offsets.is_empty() {
                self.forget(group_id)?;
            } else {
                self.persist(group_id, group)?;
            }
        }
        groups.retain(|_, group| !group.members.is_empty() || !group.offsets.is_empty());
        Ok(())
    }

    /// Deletes a group's offsets file durably.
    fn forget(&self, group_id: &str) -> std::io::Result<()> {
        let path = self.dir.join(format!("{}.offsets", hex(group_id.as_bytes())));
        match self.disk.remove(&path) {
            Ok(()) => self.disk.sync_dir(&self.dir),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn persist(&self, group_id: &str, group: &Group) -> std::io::Result<()> {
        let mut text = String::from("corelog-offsets 1\n");
        for ((topic, partition), (offset, metadata)) in &group.offsets {
            let metadata = metadata.as_ref().map_or("-".to_string(), |m| hex(m.as_bytes()));
            text.push_str(&format!("{topic} {partition} {offset} {metadata}\n"));
        }
        let path = self.dir.join(format!("{}.offsets", hex(group_id.as_bytes())));
        let temp = path.with_extension("tmp");
        let file = self.disk.open(&temp, true)?;
        self.disk.write_at(&file, &temp, text.as_bytes(), 0)?;
        self.disk.sync(&file, &temp, true)?;
        self.disk.rename(&temp, &path)?;
        if crate::plant::armed(crate::plant::Plant::UnsyncedOffsetCommit) {
            return Ok(()); // planted bug: the rename is not durable
        }
        self.disk.sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(offset: i64) -> Vec<(String, i32, i64, Option<String>)> {
        vec![("payments".to_string(), 0, offset, None)]
    }

    #[test]
    fn given_an_idle_group_when_the_retention_passes_then_its_offsets_and_file_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::open(dir.path(), 60_000).unwrap();
        assert_eq!(coordinator.commit("idle", -1, "", &offsets(42)), code::NONE);
        assert_eq!(coordinator.commit("busy", -1, "", &offsets(7)), code::NONE);
        let now = crate::types::now_ms();
        coordinator.tick_at(now + 59_000);
        assert_eq!(
            coordinator.committed("idle", "payments", 0),
            Some((42, None)),
            "kept within the retention"
        );
        // A member keeps its group's offsets however long it stays.
        coordinator.with_group("busy", |group| {
            group.members.insert(
                "m".into(),
                Member {
                    session_timeout: Duration::from_secs(3600),
                    rebalance_timeout: Duration::from_secs(60),
                    protocols: Vec::new(),
                    joined: true,
                    generation: 0,
                    last_heartbeat: Instant::now(),
                    assignment: Bytes::new(),
                },
            );
            group.state = State::Stable;
            group.leader = Some("m".into());
        });
        coordinator.tick_at(now + 61_000);
        assert_eq!(coordinator.committed("idle", "payments", 0), None, "expired");
        assert_eq!(coordinator.committed("busy", "payments", 0), Some((7, None)));
        let files: Vec<_> = std::fs::read_dir(dir.path().join(GROUPS_DIR)).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "only the live group's file is left");
        drop(coordinator);
        let reopened = Coordinator::open(dir.path(), 60_000).unwrap();
        assert_eq!(reopened.committed("idle", "payments", 0), None, "the expiry is durable");
        assert_eq!(reopened.committed("busy", "payments", 0), Some((7, None)));
        // Offsets of a deleted topic go with it, durably.
        reopened.commit("busy", -1, "", &[("clicks".to_string(), 3, 9, None)]);
        reopened.retain_topics(|topic| topic != "payments").unwrap();
        assert_eq!(reopened.committed("busy", "payments", 0), None);
        assert_eq!(reopened.committed("busy", "clicks", 3), Some((9, None)));
        drop(reopened);
        let reopened = Coordinator::open(dir.path(), 60_000).unwrap();
        assert_eq!(reopened.committed("busy", "payments", 0), None);
        assert_eq!(reopened.committed("busy", "clicks", 3), Some((9, None)));
        // The reopened group's idle time starts at its file's mtime, not at the open.
        reopened.tick_at(crate::types::now_ms() + 61_000);
        assert_eq!(reopened.committed("busy", "clicks", 3), None);
    }
}
