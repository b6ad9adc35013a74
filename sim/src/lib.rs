//! # sim — corelog's deterministic simulator
//!
//! Runs the engine's real partition log, group commit and idempotent-producer state
//! against [`disk::SimDisk`], a simulated disk that keeps unsynced bytes apart from
//! synced ones, tears them at a crash and injects I/O errors, under a seed: the same
//! seed replays the same scenario exactly. [`scenario`] drives one partition the way
//! a shard does and checks a model after every step. The binary `corelog-sim` runs
//! many seeds, replays one, and arms planted bugs ([`engine::plant`]) to show the model
//! catches them. See `docs/SIMULATION.md`.
//!
//! What it never does: touch the network, run io_uring or real threads; anything a
//! scenario does depends only on its seed.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod disk;
pub mod scenario;
