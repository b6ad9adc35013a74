//! # batch — the batch runner over landed Parquet
//!
//! The source of truth of corelog's batch path. Jobs read the lander's Hive layout
//! (never segment files) and run as **stages** of **tasks** on a work-stealing
//! [`scheduler`]: per-worker `crossbeam-deque` deques, a global injector, stealing,
//! bounded retries, speculative copies of stragglers (Spark 4's rule and defaults),
//! cooperative cancellation. A stage ends at a barrier once every task committed
//! exactly one result.
//!
//! * [`morsel`]: the unit of scheduling — a Parquet row group or a slice of one —
//!   found by walking `INPUT/<topic>/dt=…/hr=…`, pruned by row-group statistics;
//! * [`hourly`]: the `hourly` job (scan + partial aggregate, exchange by key, final
//!   aggregate, atomic Parquet writes per hour);
//! * [`daily`]: the `daily` job, a rollup of `hourly` output that merges its sketches;
//! * [`rings`]: the `rings` job, connected components of the user–card–device graph
//!   (union-find per task, merged), written as a deny-list;
//! * [`reconcile`]: the `reconcile` job, a stream query's windows recomputed from the
//!   landed source with the engine's own window code and compared with the landed
//!   `<query>.agg` topic (what late events changed);
//! * [`output`]: atomic, idempotent output files;
//! * [`job`]: the one shape of a job ([`Job`]: run on a scheduler, answer a
//!   [`JobReport`] and the job's own output, or a [`JobError`]).
//!
//! Invariants: `batch` never reads segment files and does no network I/O; a task's
//! output commits once (first finisher wins, compare-and-set); every queue is bounded
//! by its stage's task count; results do not depend on scheduling (tests compare runs
//! with and without speculation and injected failures, and against DuckDB).

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod daily;
pub mod hourly;
pub mod job;
pub mod morsel;
pub mod output;
pub mod reconcile;
pub mod rings;
pub mod scheduler;

pub use job::{Job, JobError, JobReport, Progress, STAGES_MAX};
pub use scheduler::{Injection, Scheduler, SchedulerConfig, Speculation, StageProgress, StageReport};
