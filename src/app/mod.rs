//! Command bodies behind the CLI (`main.rs` only parses and prints). Device selection lives in
//! `backend/device.rs` (re-exported here).

pub mod bench;
pub mod bench_cli;
pub mod bench_step;
pub mod info;
pub mod run_generate;
pub mod score;
pub mod train;

pub use crate::backend::device::{resolve_device, run_on, DeviceChoice, OnDevice};
