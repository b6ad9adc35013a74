//! The one shape every batch job has: [`Job`], run on a [`Scheduler`] with one
//! [`StageProgress`] per stage, answering a [`JobReport`] (plan, stages, rows, files,
//! skew) and its own output, or a [`JobError`].
//!
//! What a job never does: read segment files, touch the network, or depend on
//! scheduling for its result (see the crate doc).

use crate::morsel::Plan;
use crate::scheduler::{Scheduler, StageProgress, StageReport};
use std::path::PathBuf;

/// Stages a job may have (progress counters are allocated for this many).
pub const STAGES_MAX: usize = 4;

/// Live counters, one per stage a job runs (in order).
pub type Progress = [StageProgress; STAGES_MAX];

/// Errors of a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Planning failed.
    #[error("{0}")]
    Morsel(#[from] crate::morsel::MorselError),
    /// A stage failed.
    #[error("{0}")]
    Stage(#[from] crate::scheduler::StageError),
}

/// A key the skew sample found hot, and its sampled rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// The key, as the job names it (e.g. `merchant/country hour H`).
    pub key: String,
    /// Rows of it in the sample.
    pub rows: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// The morsel plan.
    pub plan: Plan,
    /// One report per stage.
    pub stages: Vec<StageReport>,
    /// Rows aggregated.
    pub rows: u64,
    /// Rows skipped for lacking a field the job needs.
    pub bad_rows: u64,
    /// Output groups (rows written).
    pub groups: usize,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Hot keys found by the skew sample (largest first).
    pub hot_keys: Vec<HotKey>,
    /// Sub-keys each hot key was salted over (0 when none was hot).
    pub salts: usize,
}

/// A batch job.
pub trait Job {
    /// What the job returns beside its report.
    type Output;

    /// The job's name (the `corelog batch` subcommand).
    fn name(&self) -> &'static str;

    /// Runs the job's stages on `scheduler`; `progress[i]` receives stage `i`'s live
    /// counters and `on_stage(name, tasks)` is called as each stage starts.
    fn run(
        &self,
        scheduler: &Scheduler,
        progress: &Progress,
        on_stage: &mut dyn FnMut(&str, usize),
    ) -> Result<(JobReport, Self::Output), JobError>;
}
