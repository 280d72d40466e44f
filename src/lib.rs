//! `cada`: a training engine for Case-Augmented Deliberative Alignment.
//!
//! Data flows one way: CLI (`main.rs`) → CADA loop (`cada`) → training glue (`train`)
//! → model (`model`) → backend (`backend`) → kernels.

pub mod app;
pub mod backend;
pub mod cada;
pub mod model;
pub mod train;
pub mod util;
