//! `cada`: a training engine for Case-Augmented Deliberative Alignment.
//!
//! Data flows one way: CLI (`main.rs`) → CADA loop (`cada`) → training glue (`train`)
//! → model (`model`) → backend (`backend`) → kernels.

// Ops take shapes as plain arguments (like kernel launches); grouping them into structs for
// the sake of the lint would make every call site harder to read.
#![allow(clippy::too_many_arguments)]

pub mod app;
pub mod backend;
pub mod bench;
pub mod cada;
pub mod model;
pub mod profile;
pub mod train;
pub mod util;
