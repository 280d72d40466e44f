//! Command bodies behind the CLI (`main.rs` only parses and prints), and device selection.

pub mod bench;
pub mod info;
pub mod run_generate;
pub mod score;
pub mod train;

use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use anyhow::Result;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// the GPU when a driver and a device are present, else the CPU
    Auto,
    Cpu,
    Cuda,
}

/// Work that runs on whichever backend was chosen (the model code is generic over `Backend`).
pub trait OnDevice {
    type Output;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Output>;
}

/// True when a GPU backend is compiled in and finds a device. No GPU backend exists yet
/// (issue 5), so `auto` always resolves to the CPU.
fn gpu_present() -> bool {
    false
}

/// Resolves `auto`; `cuda` is refused with a clear message until the GPU backend exists.
pub fn resolve_device(choice: DeviceChoice) -> Result<DeviceChoice> {
    match choice {
        DeviceChoice::Cpu => Ok(DeviceChoice::Cpu),
        DeviceChoice::Auto if gpu_present() => Ok(DeviceChoice::Cuda),
        DeviceChoice::Auto => Ok(DeviceChoice::Cpu),
        DeviceChoice::Cuda => anyhow::bail!(
            "--device cuda: the CUDA backend is not part of this build yet (only the CPU reference backend exists; see README)"
        ),
    }
}

pub fn run_on<T: OnDevice>(choice: DeviceChoice, task: T) -> Result<T::Output> {
    resolve_device(choice)?;
    task.run(&Cpu::new())
}
