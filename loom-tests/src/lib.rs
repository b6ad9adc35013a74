//! # loom-tests — models of the engine's lock-free primitives
//!
//! This crate compiles the engine's *own source files* for the shared primitives
//! (`engine/src/sync.rs`, `ring.rs`, `watermark.rs`) with `--cfg loom`, so the models
//! in `tests/` explore every interleaving of exactly the code the engine runs. The
//! files are included by path rather than through the `engine` crate because the
//! engine's other dependencies (tokio among them) do not build under `--cfg loom`.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release` (see `ci.sh`).
//! Without `--cfg loom` the same code builds on `std` types and the models are skipped.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

#[path = "../../engine/src/sync.rs"]
pub mod sync;

#[path = "../../engine/src/ring.rs"]
pub mod ring;

#[path = "../../engine/src/watermark.rs"]
pub mod watermark;
