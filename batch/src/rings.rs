//! The `rings` job: connected components of the user–card–device graph of the landed
//! payments. Users who share a card or a device (directly or through a chain) are one
//! component; a component with at least `min_ring_size` users is a fraud ring.
//!
//! Stages:
//! 1. **scan + local union-find** — one task per morsel: read `user_id`, `card_id`,
//!    `device_id`, union each payment's user with its card and device in a union-find
//!    local to the task, and emit the task's forest compressed to `(node, root)` pairs
//!    (one per distinct node, far fewer than rows);
//! 2. **merge** — the forests are unioned into one (near-linear in distinct nodes) and
//!    components with enough users are collected;
//! 3. **write** — the deny-list, `OUTPUT/rings/part-00000.parquet` (`ring_id`,
//!    `kind` = user|card|device, `id`, `ring_users`), rows sorted, written atomically.
//!
//! Node identity: the 64-bit FNV-1a hash of `kind` and id. Two nodes could collide and
//! merge two components; among `n` nodes the chance of any collision is about
//! `n² / 2^65` (3·10⁻⁸ for a million nodes), accepted and documented. Ring ids are the
//! smallest user id of the ring, so they are stable across runs.

use crate::job::{JobError, JobReport};
use crate::morsel::Morsel;
use crate::output::write_parquet_atomic;
use crate::scheduler::{Scheduler, TaskContext, TaskError};
use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default smallest ring, in users.
pub const MIN_RING_SIZE_DEFAULT: usize = 4;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RingsJob {
    /// The lander's output root.
    pub input: PathBuf,
    /// Topic to read.
    pub topic: String,
    /// Where `rings/` goes.
    pub output: PathBuf,
    /// Smallest component reported, in users.
    pub min_ring_size: usize,
    /// Only event times at or after this (ms since the epoch), for pruning.
    pub from_ms: Option<i64>,
    /// Only event times before this.
    pub to_ms: Option<i64>,
}

/// A node kind of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A user.
    User,
    /// A card.
    Card,
    /// A device.
    Device,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Card => "card",
            Self::Device => "device",
        }
    }
}

fn node_id(kind: Kind, id: &str) -> u64 {
    let seed = 0xcbf2_9ce4_8422_2325u64 ^ (kind as u64 + 1);
    id.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A union-find over sparse u64 node ids (union by size, path halving).
#[derive(Debug, Default)]
pub struct UnionFind {
    index: HashMap<u64, u32>,
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn slot(&mut self, node: u64) -> u32 {
        let next = self.parent.len() as u32;
        let slot = *self.index.entry(node).or_insert(next);
        if slot == next {
            self.parent.push(next);
            self.size.push(1);
        }
        slot
    }

    fn find(&mut self, mut slot: u32) -> u32 {
        while self.parent[slot as usize] != slot {
            let grandparent = self.parent[self.parent[slot as usize] as usize];
            self.parent[slot as usize] = grandparent;
            slot = grandparent;
        }
        slot
    }

    /// Puts `a` and `b` in one component.
    pub fn union(&mut self, a: u64, b: u64) {
        let (a, b) = (self.slot(a), self.slot(b));
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        if self.size[ra as usize] < self.size[rb as usize] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb as usize] = ra;
        self.size[ra as usize] += self.size[rb as usize];
    }

    /// Every node with its component's representative node.
    pub fn roots(&mut self) -> Vec<(u64, u64)> {
        let nodes: Vec<(u64, u32)> = self.index.iter().map(|(n, s)| (*n, *s)).collect();
        let by_slot: HashMap<u32, u64> = nodes.iter().map(|(n, s)| (*s, *n)).collect();
        nodes.into_iter().map(|(node, slot)| (node, by_slot[&self.find(slot)])).collect()
    }

    /// The representative node of `node`'s component.
    pub fn root_of(&mut self, node: u64) -> Option<u64> {
        let slot = *self.index.get(&node)?;
        let root = self.find(slot);
        self.index.iter().find(|(_, s)| **s == root).map(|(n, _)| *n)
    }
}

/// A task's compressed forest, plus the names of the nodes it saw.
#[derive(Debug, Default)]
struct Forest {
    edges: Vec<(u64, u64)>,
    names: HashMap<u64, (Kind, String)>,
}

fn task_error(error: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(error.to_string())
}

fn local_forest(morsel: &Morsel, context: &TaskContext<'_>) -> Result<Forest, TaskError> {
    let reader = crate::morsel::reader(morsel, Some(&["user_id", "card_id", "device_id"]))
        .map_err(TaskError::Failed)?;
    let mut forest = UnionFind::default();
    let mut names: HashMap<u64, (Kind, String)> = HashMap::new();
    for batch in reader {
        context.checkpoint()?;
        let batch = batch.map_err(task_error)?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| TaskError::Failed(format!("{}: no column {name}", morsel.file.display())))
        };
        let (users, cards, devices) = (column("user_id")?, column("card_id")?, column("device_id")?);
        let (users, cards, devices) =
            (users.as_string::<i32>(), cards.as_string::<i32>(), devices.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if !users.is_valid(i) {
                continue;
            }
            let user = node_id(Kind::User, users.value(i));
            names.entry(user).or_insert_with(|| (Kind::User, users.value(i).to_string()));
            for (kind, column) in [(Kind::Card, cards), (Kind::Device, devices)] {
                if column.is_valid(i) {
                    let node = node_id(kind, column.value(i));
                    names.entry(node).or_insert_with(|| (kind, column.value(i).to_string()));
                    forest.union(user, node);
                }
            }
        }
    }
    Ok(Forest { edges: forest.roots(), names })
}

/// The deny-list's schema.
pub fn output_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("ring_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("ring_users", DataType::Int64, false),
    ]))
}

/// A found ring: its id (smallest user id) and members by kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ring {
    /// Smallest user id in the ring.
    pub ring_id: String,
    /// Member users, sorted.
    pub users: Vec<String>,
    /// Cards, sorted.
    pub cards: Vec<String>,
    /// Devices, sorted.
    pub devices: Vec<String>,
}

fn deny_list(rings: &[Ring]) -> RecordBatch {
    let (mut ring_id, mut kind, mut id, mut users) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), Int64Builder::new());
    for ring in rings {
        for (k, members) in
            [(Kind::User, &ring.users), (Kind::Card, &ring.cards), (Kind::Device, &ring.devices)]
        {
            for member in members {
                ring_id.append_value(&ring.ring_id);
                kind.append_value(k.name());
                id.append_value(member);
                users.append_value(ring.users.len() as i64);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ring_id.finish()),
        Arc::new(kind.finish()),
        Arc::new(id.finish()),
        Arc::new(users.finish()),
    ];
    RecordBatch::try_new(output_schema(), columns).expect("columns match the schema")
}

/// `OUTPUT/rings/part-00000.parquet`.
pub fn rings_path(output: &Path) -> PathBuf {
    output.join("rings/part-00000.parquet")
}

impl crate::job::Job for RingsJob {
    /// The rings found.
    type Output = Vec<Ring>;
    fn name(&self) -> &'static str {
        "rings"
    }
    fn run(
        &self,
        scheduler: &Scheduler,
        progress: &crate::job::Progress,
        on_stage: &mut dyn FnMut(&str, usize),
    ) -> Result<(JobReport, Vec<Ring>), JobError> {
        run(self, scheduler, progress, on_stage)
    }
}

/// Runs the job; returns the report and the rings found.
fn run(
    job: &RingsJob,
    scheduler: &Scheduler,
    progress: &crate::job::Progress,
    on_stage: &mut dyn FnMut(&str, usize),
) -> Result<(JobReport, Vec<Ring>), JobError> {
    let files = crate::morsel::parquet_files(&job.input.join(&job.topic))?;
    let plan = crate::morsel::plan(&files, "ts", job.from_ms, job.to_ms)?;
    let mut report = JobReport { plan: plan.clone(), ..JobReport::default() };
    on_stage("scan", plan.morsels.len());
    let (forests, scan) = scheduler.run_stage("scan", plan.morsels.len(), &progress[0], |context| {
        local_forest(&plan.morsels[context.task], context)
    })?;
    report.stages.push(scan);

    on_stage("merge", 1);
    let (mut rings, merge) = scheduler.run_stage("merge", 1, &progress[1], |context| {
        let mut global = UnionFind::default();
        for forest in &forests {
            context.checkpoint()?;
            for (node, root) in &forest.edges {
                global.union(*node, *root);
            }
        }
        let mut members: HashMap<u64, Vec<u64>> = HashMap::new();
        for (node, root) in global.roots() {
            members.entry(root).or_default().push(node);
        }
        let mut names: HashMap<u64, &(Kind, String)> = HashMap::new();
        for forest in &forests {
            names.extend(forest.names.iter().map(|(node, name)| (*node, name)));
        }
        let name = |node: &u64| *names.get(node).expect("every node was named");
        let mut rings = Vec::new();
        for nodes in members.values() {
            let users = nodes.iter().filter(|n| name(n).0 == Kind::User).count();
            if users < job.min_ring_size {
                continue;
            }
            let mut ring =
                Ring { ring_id: String::new(), users: Vec::new(), cards: Vec::new(), devices: Vec::new() };
            for node in nodes {
                let (kind, id) = name(node);
                match kind {
                    Kind::User => ring.users.push(id.clone()),
                    Kind::Card => ring.cards.push(id.clone()),
                    Kind::Device => ring.devices.push(id.clone()),
                }
            }
            ring.users.sort();
            ring.cards.sort();
            ring.devices.sort();
            ring.ring_id = ring.users[0].clone();
            rings.push(ring);
        }
        rings.sort();
        Ok(rings)
    })?;
    report.stages.push(merge);
    let rings = rings.pop().expect("one merge task");
    report.groups = rings.len();
    on_stage("write", 1);
    let (files, write) = scheduler.run_stage("write", 1, &progress[2], |context| {
        let path = rings_path(&job.output);
        write_parquet_atomic(&path, &deny_list(&rings), context).map_err(task_error)?;
        Ok(path)
    })?;
    report.stages.push(write);
    report.files = files;
    Ok((report, rings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_chains_when_unioned_then_components_are_exact() {
        let mut uf = UnionFind::default();
        uf.union(1, 2);
        uf.union(3, 4);
        uf.union(2, 3);
        uf.union(10, 11);
        let mut roots = uf.roots();
        roots.sort();
        let root = roots[0].1;
        assert!(roots[..4].iter().all(|(_, r)| *r == root));
        assert_eq!(roots[4].1, roots[5].1);
        assert_ne!(roots[4].1, root);
        assert_eq!(uf.root_of(4), Some(root));
        assert_eq!(uf.root_of(99), None);
    }
}
