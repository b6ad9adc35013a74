//! # tools — the `corelog` command-line tool
//!
//! The library half of the `corelog` binary: each subcommand is a module with a
//! `run` function that the binary (`src/main.rs`) calls and tests call directly. The
//! CLI contract (flags, exit codes) is fixed in DESIGN.md; every command prints
//! `--help` and exits non-zero with a one-line reason on bad input.
//!
//! Architecture invariant: tools hold no engine logic of their own; they drive the
//! embedded API of `engine` and print what it says.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod access;
pub mod batch;
pub mod client;
pub mod demo;
pub mod deny;
pub mod gen;
pub mod inspect;
pub mod land;
pub mod payments;
pub mod serve;
